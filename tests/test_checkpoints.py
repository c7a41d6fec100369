"""SAM checkpoints load exactly; LGA checkpoints round-trip bit-exactly; bad files fail clearly."""

from __future__ import annotations

import pickle

import pytest
import torch
from typer.testing import CliRunner

from lga_export.build import build_lga
from lga_export.checkpoint import load_lga_checkpoint, load_sam_checkpoint, save_lga_checkpoint
from lga_export.cli.main import app
from lga_export.config import get_preset
from lga_export.errors import LGAError

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_lga(get_preset("tiny"))
    with torch.no_grad():
        for ffm in model.ffms:
            ffm.image_update.gamma.normal_()
    return model


def test_sam_vit_b_loads_without_missing_or_unexpected_keys(sam_vit_b_checkpoint, bert768_dir):
    model = build_lga(get_preset("vit_b").replace(text_model=str(bert768_dir)))
    report = load_sam_checkpoint(model, sam_vit_b_checkpoint)
    state = torch.load(sam_vit_b_checkpoint, weights_only=True)
    ours = model.state_dict()
    assert all(k.startswith("prompt_encoder.") and "pe_layer" not in k for k in report.ignored)
    assert report.loaded == len(state) - len(report.ignored)
    for key in ("image_encoder.blocks.11.attn.rel_pos_h", "mask_decoder.iou_token.weight",
                "image_encoder.neck.0.weight"):
        assert torch.equal(ours[key], state[key])
    assert torch.equal(ours["dense_pe.positional_encoding_gaussian_matrix"],
                       state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])


def test_sam_checkpoint_for_another_preset_is_refused(sam_vit_b_checkpoint, tiny_model):
    with pytest.raises(LGAError, match="use --preset vit_b"):
        load_sam_checkpoint(build_lga(get_preset("tiny")), sam_vit_b_checkpoint)


def test_truncated_and_pickled_files_are_refused(tmp_path, sam_vit_b_checkpoint):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(sam_vit_b_checkpoint.read_bytes()[:100_000])
    model = build_lga(get_preset("tiny"))
    with pytest.raises(LGAError, match="truncated or corrupt"):
        load_sam_checkpoint(model, truncated)
    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": torch.zeros(1), "payload": pickle.loads(pickle.dumps(Exploit()))}, evil)
    with pytest.raises(LGAError, match="refusing to unpickle"):
        load_sam_checkpoint(model, evil)
    missing = tmp_path / "missing.pth"
    state = torch.load(sam_vit_b_checkpoint, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    torch.save(state, missing)
    with pytest.raises(LGAError, match=r"1 missing keys \['mask_decoder.iou_token.weight'\]"):
        load_sam_checkpoint(build_lga(get_preset("vit_b")), missing)


class Exploit:
    """Stands for an arbitrary object a malicious checkpoint might carry."""


def test_lga_checkpoint_round_trip_is_bit_exact(tmp_path, tiny_model):
    path = save_lga_checkpoint(tiny_model, tmp_path / "model.safetensors")
    loaded = load_lga_checkpoint(path)
    assert loaded.config == tiny_model.config
    original, restored = tiny_model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    image = torch.randn(1, 3, 256, 256)
    ids, mask = torch.randint(1000, 2000, (1, 9)), torch.ones(1, 9, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(tiny_model(image, ids, mask), loaded(image, ids, mask))
    assert not list(tmp_path.glob(".*partial")), "no temporary file may be left behind"


def test_half_stores_fp16_weights_that_load_rounded_into_the_fp32_model(tmp_path, tiny_model):
    """`lga-export half`: FP16 in the file (about half its size), FP32 in the loaded model, every
    weight the FP16 rounding of the original; the original is never overwritten."""
    from safetensors import safe_open

    path = save_lga_checkpoint(tiny_model, tmp_path / "model.safetensors")
    copy = tmp_path / "half.safetensors"
    result = runner.invoke(app, ["half", "--checkpoint", str(path), "--out", str(copy)])
    assert result.exit_code == 0, result.output
    assert copy.stat().st_size < 0.55 * path.stat().st_size and "largest weight change" in result.output
    with safe_open(str(copy), framework="pt") as handle:
        assert handle.metadata()["stored_dtype"] == "float16"
        assert {handle.get_tensor(k).dtype for k in handle.keys()} <= {torch.float16, torch.int64}
        stored = set(handle.keys())
    loaded = load_lga_checkpoint(copy).state_dict()
    for key, value in tiny_model.state_dict().items():  # what the file does not hold (the frozen text model) stays exact
        expected = value.half().to(value.dtype) if value.is_floating_point() and key in stored else value
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], expected), key
    again = runner.invoke(app, ["half", "--checkpoint", str(path), "--out", str(copy)])
    assert again.exit_code == 2 and "--force" in again.output
    itself = runner.invoke(app, ["half", "--checkpoint", str(path), "--out", str(path)])
    assert itself.exit_code == 2 and "the checkpoint itself" in itself.output


def test_a_checkpoint_records_its_family_and_one_from_before_the_field_loads_as_sam_vit():
    """The shipped tiny model was saved before configs had a `family` (2026-11-29): its stored
    config names none and it loads as SAM-ViT; the shipped lite model names tiny_vit."""
    from lga_export.checkpoint import load_lga_config, read_checkpoint_metadata
    from lga_export.loading import embedded_checkpoint
    from lga_export.modeling.lga import LGA

    old, lite = embedded_checkpoint("tiny"), embedded_checkpoint("lite")
    if old is None or lite is None:
        pytest.skip("this install ships no embedded models")
    assert '"family"' not in read_checkpoint_metadata(old)["lga_config"]
    assert load_lga_config(old).family == "sam_vit" and type(load_lga_checkpoint(old)) is LGA
    assert '"family": "tiny_vit"' in read_checkpoint_metadata(lite)["lga_config"]
    assert load_lga_config(lite).family == "tiny_vit"


def test_checkpoint_does_not_copy_the_frozen_text_encoder(tmp_path, tiny_model):
    from safetensors import safe_open

    path = save_lga_checkpoint(tiny_model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert not any(k.startswith("text_encoder.backbone.") for k in handle.keys())
    with pytest.raises(LGAError, match="--force"):
        save_lga_checkpoint(tiny_model, path)


def test_cli_reports_corrupt_checkpoint_with_exit_code_2(tmp_path, tiny_model):
    path = save_lga_checkpoint(tiny_model, tmp_path / "m.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (corrupt, tmp_path / "absent.safetensors"):
        result = runner.invoke(app, ["info", "--checkpoint", str(bad)])
        assert result.exit_code == 2, result.output
        assert str(bad) in result.output
        assert "Traceback" not in result.output


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from lga_export.fileio import atomic_dir, atomic_file

    with atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner").write_text("y")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask

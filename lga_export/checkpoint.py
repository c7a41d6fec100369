"""Checkpoints: SAM's official .pth files in, LGA safetensors (with the config) in and out.

Nothing here unpickles arbitrary objects: SAM files go through `torch.load(weights_only=True)`
on the CPU, LGA checkpoints are safetensors with the config as JSON metadata.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lga_export.config import PRESETS, LGAConfig
from lga_export.errors import LGAError
from lga_export.fileio import atomic_file
from lga_export.modeling.state_check import check_state

CHECKPOINT_FORMAT = "lga-export/1"
_SAM_PARTS = ("image_encoder.", "mask_decoder.")
_SAM_PE = "prompt_encoder.pe_layer."
_OUR_PE = "dense_pe."


@dataclass(frozen=True)
class SamLoadReport:
    loaded: int
    ignored: tuple[str, ...]  # prompt-encoder embeddings: LGA runs without prompts


def file_kind(path: Path) -> str:
    """What a checkpoint file holds, from its first bytes: 'zip' (torch.save), 'pickle' (legacy
    torch.save), 'safetensors', or 'unknown'."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return "unknown"


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LGAError(f"{path}: no such file; give the path of a SAM checkpoint (.pth)")
    kind = file_kind(path)
    if kind == "safetensors":
        raise LGAError(f"{path}: a safetensors file, not a SAM .pth; an LGA checkpoint goes to --checkpoint")
    if kind == "unknown":
        raise LGAError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip nor pickle format); give SAM's "
                       f"official sam_vit_*.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LGAError(f"{path}: holds Python objects beyond tensors; refusing to unpickle it "
                       f"(re-save it as a plain state dict)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LGAError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({first})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LGAError(f"{path}: not a state dict of tensors; expected SAM's sam_vit_*.pth layout")
    return state


def guess_sam_preset(state: dict[str, torch.Tensor]) -> str | None:
    """The preset whose ViT width and depth match a SAM state dict, if any."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, cfg in PRESETS.items():
        if cfg.embed_dim == weight.shape[0] and cfg.depth == depth and cfg.patch_size == weight.shape[-1]:
            return name
    return None


def _mismatch_hint(path: Path, state: dict[str, torch.Tensor], config: LGAConfig) -> str:
    guess = guess_sam_preset(state)
    if guess and guess != config.preset:
        return f"; it looks like a {guess} checkpoint: use --preset {guess}"
    return ""


def load_sam_checkpoint(model: nn.Module, path: str | Path) -> SamLoadReport:
    """Load SAM's image encoder, mask decoder and dense positional encoding into `model`."""
    path = Path(path)
    state = _read_torch_state(path)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key.startswith(_SAM_PARTS):
            mapped[key] = tensor
        elif key.startswith(_SAM_PE):
            mapped[_OUR_PE + key[len(_SAM_PE):]] = tensor
        elif key.startswith("prompt_encoder."):
            ignored.append(key)
        else:
            unexpected.append(key)
    expected = {k for k in ours if k.startswith(_SAM_PARTS + (_OUR_PE,))}
    hint = _mismatch_hint(path, state, model.config)
    check_state(path, mapped, {k: ours[k] for k in expected}, f"SAM {model.config.preset}", hint, unexpected)
    model.load_state_dict(mapped, strict=False)
    return SamLoadReport(loaded=len(mapped), ignored=tuple(ignored))


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's config and every weight (name, dtype, shape, bytes): what an
    export or engine records, so an artefact of another model is refused."""
    digest = hashlib.sha256(model.config.to_json().encode())
    hash_tensors(digest, model.state_dict().items())
    return digest.hexdigest()


def hash_tensors(digest: hashlib._Hash, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed `tensors` to `digest` by name (name, dtype, shape, bytes): one weight hash for the model
    digest and the device check's image-graph digest, so both prove a bitwise-identical rebuild."""
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b"")


def _stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state minus what a verified package provides when the model is built: a frozen,
    pretrained text backbone (referenced by name) and the family's pretrained frozen parts."""
    from lga_export.build import frozen_text_backbone
    from lga_export.families import family_of

    skip = (("text_encoder.backbone.",) if frozen_text_backbone(model) else ()) + \
        family_of(model.config).provided_prefixes(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not (skip and k.startswith(skip))}


def save_lga_checkpoint(model: nn.Module, path: str | Path, *, force: bool = False,
                        metadata: dict[str, str] | None = None, half: bool = False) -> Path:
    """Write model weights and config to one safetensors file, atomically. `half`: floating-point
    weights stored in FP16 (half the file; they load back into the FP32 model, so the model is the
    rounded one, which is what an evaluation of the file scores)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": CHECKPOINT_FORMAT, "lga_config": model.config.to_json(), **(metadata or {})}
    state = _stored_state(model)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        meta["stored_dtype"] = "float16"
    with atomic_file(path, force=force) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LGAError(f"{path}: no such file; give an LGA checkpoint (.safetensors)")
    if file_kind(path) in ("zip", "pickle"):
        raise LGAError(f"{path}: a PyTorch .pth file, not an LGA checkpoint; a SAM checkpoint goes to "
                       f"--sam-checkpoint (with --preset)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise LGAError(f"{path}: not a readable safetensors file, truncated or corrupt ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "lga_config" not in meta:
        raise LGAError(f"{path}: not an LGA checkpoint (no lga-export metadata); "
                       f"SAM .pth files go to --sam-checkpoint")
    return meta


def load_lga_config(path: str | Path) -> LGAConfig:
    return LGAConfig.from_json(read_checkpoint_metadata(path)["lga_config"])


def load_lga_checkpoint(path: str | Path, *, config: LGAConfig | None = None,
                        text_backbone: nn.Module | None = None) -> nn.Module:
    """Rebuild the model stored in `path` and load its weights exactly."""
    from safetensors.torch import load_file

    from lga_export.build import build_lga

    path = Path(path)
    stored_config = load_lga_config(path)
    config = config or stored_config
    model = build_lga(config, text_backbone)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise LGAError(f"{path}: weights unreadable, truncated or corrupt ({exc})") from exc
    check_state(path, state, _stored_state(model), f"its {config.preset} config")
    model.load_state_dict(state, strict=False)
    model.train(model.training)  # modules that cache derived tensors in eval mode (TinyViT) refresh them
    return model

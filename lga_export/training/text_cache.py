"""Report embeddings computed once per distinct text.

The text backbone is frozen, so its mean-pooled output for a report never changes: we run it
once per distinct report and keep that. The trainable Linear(F -> C) projection is applied
per batch, so it still learns (caching the full `encode_text` output would freeze it).
With a trained text backbone or a learnable query nothing is cached: `encode_text` runs as is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lga_export.contract import ATTENTION_MASK, INPUT_IDS
from lga_export.modeling.modes import eval_mode
from lga_export.modeling.text_encoder import load_text_tokenizer, mean_pool


class TextEmbedder:
    """texts -> Bx1xC text embeddings for `model.forward_image`, with the frozen part cached."""

    def __init__(self, model: nn.Module, texts: Iterable[str], batch_size: int = 64) -> None:
        self.model = model
        config = model.config
        self.query = config.text_source == "learnable_query"
        self.cached = not self.query and not config.train_text_encoder
        self.pooled: dict[str, torch.Tensor] = {}
        self.tokenizer = None if self.query else load_text_tokenizer(config.text_model)
        self.batch_size = batch_size
        if self.cached:
            self.add(texts)

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The same tokenisation as inference (empty text refused, over-long text truncated)."""
        feeds = self.tokenizer.encode(list(texts), self.model.config.max_text_length)
        return tuple(torch.from_numpy(feeds[name]) for name in (INPUT_IDS, ATTENTION_MASK))

    def add(self, texts: Iterable[str]) -> None:
        """Cache more reports (e.g. the validation split's)."""
        missing = sorted(set(texts) - self.pooled.keys())
        if not (self.cached and missing):
            return
        backbone = self.model.text_encoder.backbone
        # a frozen encoder runs as at inference: no dropout in the cached vectors
        with eval_mode(backbone), torch.no_grad():
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                ids, mask = self._tokens(chunk)
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                for text, vector in zip(chunk, mean_pool(hidden, mask)):
                    self.pooled[text] = vector.clone()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self.query:
            ids = torch.zeros(len(texts), 1, dtype=torch.long)
            return self.model.encode_text(ids, torch.ones_like(ids))
        if self.cached:
            self.add(texts)
            pooled = torch.stack([self.pooled[t] for t in texts])
            return self.model.text_encoder.projection(pooled)
        return self.model.encode_text(*self._tokens(texts))

"""Text tokenisation for ONNX inference with the `tokenizers` library only.

The exported text graph needs just input_ids and attention_mask; loading transformers (and with it
torch) for that would make the ONNX path pay seconds of import time and gigabytes of wheels. This
module reproduces exactly what `AutoTokenizer.from_pretrained(folder)(texts, padding=True,
truncation=True, max_length=..., return_tensors="np")` returns, from the folder's tokenizer.json.
"""

from __future__ import annotations

import json
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from lga_export.errors import LGAError
from lga_export.contract import text_feeds

_FIX = "re-export with lga-export onnx --force"
EMPTY_TEXT = ("empty text: every image needs a report (pass --text or a text file row); a report of only "
              "invisible characters (NUL, zero-width, control, lone accents) counts as empty")


def is_blank(text: str | None) -> bool:
    """True when `text` holds nothing a reader (or the tokenizer) would see: only whitespace,
    control characters (NUL ...), format characters (zero-width space and joiners, BOM, ...) and
    marks with no character to sit on (combining accents, variation selectors). Such a report
    tokenises to [CLS][SEP] alone, and a mask segmented from it means nothing."""
    return not text or all(ch.isspace() or unicodedata.category(ch)[0] in "CZM" for ch in text)


def _read_json(path: Path) -> dict[str, Any]:
    """A tokenizer side file as a dict; {} when absent (both files are optional in transformers)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LGAError(f"{path}: not readable JSON ({exc}); {_FIX}") from exc
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as saved by transformers: a plain string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """BERT-style batch tokeniser with transformers' padding/truncation semantics, without transformers."""

    def __init__(self, tokenizer: Tokenizer, pad_id: int, padding_side: str = "right",
                 truncation_side: str = "right") -> None:
        # Padding and truncation baked into tokenizer.json (MiniLM's says "pad everything to 128")
        # would change shapes behind our back; transformers overrides them per call, so do we.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._json = tokenizer.to_str()
        self._truncating: dict[int, Tokenizer] = {}
        self.pad_id = int(pad_id)
        self.padding_side = padding_side
        self.truncation_side = truncation_side

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextTokenizer:
        """Load <folder>/tokenizer.json, taking pad token and sides from the side files as transformers does.

        Pad token precedence follows transformers: tokenizer_config.json, then special_tokens_map.json,
        then the padding section of tokenizer.json, then BERT's default "[PAD]"; its id is looked up
        in the vocabulary (added tokens included), and 0 if the vocabulary lacks it.
        """
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise LGAError(f"{folder}: no tokenizer.json (the text model folder is incomplete); {_FIX}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse error
            raise LGAError(f"{path}: not a readable tokenizers file ({exc}); {_FIX}") from exc
        config = _read_json(folder / "tokenizer_config.json")
        special = _read_json(folder / "special_tokens_map.json")
        baked = tokenizer.padding or {}
        pad_token = next((t for t in (_token_text(config.get("pad_token")), _token_text(special.get("pad_token")),
                                      _token_text(baked.get("pad_token")), "[PAD]") if t), "[PAD]")
        pad_id = tokenizer.token_to_id(pad_token)
        return cls(tokenizer, 0 if pad_id is None else pad_id,
                   padding_side=str(config.get("padding_side") or "right"),
                   truncation_side=str(config.get("truncation_side") or "right"))

    @property
    def vocab_size(self) -> int:
        """Embedding rows the text model needs: base vocabulary plus added tokens (= len(hf_tokenizer))."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _truncator(self, max_length: int) -> Tokenizer:
        """A copy with truncation on: the library truncates before adding [CLS]/[SEP], keeping the final [SEP]."""
        if max_length not in self._truncating:
            tokenizer = Tokenizer.from_str(self._json)
            tokenizer.enable_truncation(max_length, direction=self.truncation_side)
            self._truncating[max_length] = tokenizer
        return self._truncating[max_length]

    def encode(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        """input_ids / attention_mask (int64 [B, S], padded to the longest); over-long text is truncated
        with one warning per call, empty text is an error (a mask without its report is meaningless)."""
        texts = list(texts)
        if any(is_blank(text) for text in texts):
            raise LGAError(EMPTY_TEXT)
        encodings: list[Encoding] = self._tokenizer.encode_batch(texts)
        if any(all(e.special_tokens_mask) for e in encodings):  # e.g. characters the normaliser drops
            raise LGAError(EMPTY_TEXT)
        if any(len(e.ids) > max_length for e in encodings):
            warnings.warn(f"text longer than the model's {max_length} tokens was truncated", stacklevel=2)
            encodings = self._truncator(max_length).encode_batch(texts)
        length = max((len(e.ids) for e in encodings), default=0)
        input_ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            span = slice(length - n, length) if self.padding_side == "left" else slice(0, n)
            input_ids[row, span] = encoding.ids
            attention_mask[row, span] = encoding.attention_mask
        return text_feeds(input_ids, attention_mask)

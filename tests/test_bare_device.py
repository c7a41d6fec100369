"""The device check on a simulated bare GPU image (issue #22 item 3): benchmarks/simulate_bare_device.py
builds a venv with only the image's packages (no lga-export, no segment-anything), stages a clean
copy of the tree plus the prepared bundle, and runs benchmarks/device_check.sh there in CPU mode
without network. Slow: the venv is GBs the first time (reused from ~/.cache after), and the run
measures tiny's four variants on a 2-core CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIMULATE = REPO / "benchmarks" / "simulate_bare_device.py"
# Opt-in: the first run builds a 5.8 GB venv (about 5 min) and the simulation then takes minutes
# more, which would more than double CI's time; run with LGA_BARE_DEVICE_SIM=1 before a GPU loan.
pytestmark = pytest.mark.skipif(os.environ.get("LGA_BARE_DEVICE_SIM") != "1",
                                reason="builds a 5.8 GB bare-image venv and runs the device check there (10+ "
                                       "min); set LGA_BARE_DEVICE_SIM=1 to run it")


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nice", "-n", "19", sys.executable, str(SIMULATE), *args], capture_output=True,
                          text=True, timeout=3000)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bare") / "sim"
    # Caps widened from the planned call's 420/120 s: at nice 19 on this shared 2-core CPU one tiny
    # forward pass took 1 to 36 s depending on load; this proves the path and every variant's
    # outcome, not the time (the README gives a run under the planned caps).
    done = _simulate(str(out), "--presets", "tiny", "--samples", "2", "--run-cap", "1500", "--compile-cap", "90",
                     "--", "--batches", "1", "--iters", "1", "--warmup", "0")
    return out, done


@pytest.mark.slow
def test_device_check_passes_on_the_bare_image(simulated) -> None:
    out, done = simulated
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "simulation.json").read_text())
    assert record["passed"] and record["exit_code"] == 0 and not record["problems"]
    assert record["run_seconds"] < record["caps_s"]["run"]
    assert record["travel"]["total_bytes"] < 48 << 20 and record["travel"]["bundle_bytes"] > 0
    variants = record["variants"]["tiny"]
    assert set(variants) == {"fp32", "fp16", "bf16", "compile-fp32"}
    assert all(s == "measured" or s.startswith("skipped: ") for s in variants.values()), variants
    results = json.loads((out / "device_check" / "results.json").read_text())
    fp32 = results["presets"]["tiny"]["variants"]["fp32"]
    assert fp32["status"] == "measured" and fp32["passed"] and fp32["parity"]["dice_worst"] > 0.999
    assert results["presets"]["tiny"]["checks"]["ok"]  # weights rebuilt bitwise from the carried tree
    # It ran from the staged copy with the bare venv, not from this checkout or the dev venv.
    assert (out / "image" / "repo" / "runs" / "device_bundle" / "bundle.json").is_file()
    assert not (out / "image" / "repo" / ".venv").exists()
    venv_python = Path(record["venv"]["path"]) / "bin" / "python"
    found = subprocess.run([str(venv_python), "-I", "-c", "import importlib.util as u; "
                            "print(u.find_spec('lga_export'), u.find_spec('segment_anything'))"],
                           cwd="/", capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["None", "None"]


@pytest.mark.slow
def test_preflight_on_the_bare_image_names_every_missing_module(simulated) -> None:
    """Two of the image's packages hidden: the check stops at once with exit 2, naming both."""
    out, done = simulated
    assert (out / "bundle" / "bundle.json").is_file(), done.stderr[-2000:]
    hidden = out.parent / "hidden"
    result = _simulate(str(hidden), "--bundle", str(out / "bundle"), "--presets", "tiny",
                       "--hide", "safetensors", "--hide", "torchvision")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((hidden / "simulation.json").read_text())
    assert record["exit_code"] == 2 and record["run_seconds"] < 60
    log = (hidden / "device_check" / "run.log").read_text()
    assert "missing on this machine: torchvision (pip package torchvision), safetensors (pip package safetensors)" \
        in log or ("safetensors (pip package safetensors)" in log and "torchvision (pip package torchvision)" in log)
    assert not (hidden / "device_check" / "results.json").exists()  # stopped before any work

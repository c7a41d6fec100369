"""benchmarks/device_check.py on the CPU: a tiny bundle is prepared and run end to end (the GPU
run happens on a device machine; here the code path, the checks and the outputs are proved)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(device_check, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("device") / "bundle"
    assert device_check.main(["prepare", str(folder), "--presets", "tiny", "--samples", "2"]) == 0
    return folder


def test_prepare_writes_a_small_verified_bundle(device_check, bundle: Path) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["format"] == device_check.BUNDLE_FORMAT and list(info["presets"]) == ["tiny"]
    assert device_check.disk_bytes(bundle) < device_check.MAX_BUNDLE_BYTES
    entry = info["presets"]["tiny"]
    assert entry["weights"]["kind"] == "checkpoint" and entry["weights"]["path"] == device_check.DEFAULT_CHECKPOINT
    assert entry["config"]["text_source"] == "learnable_query"  # no text backbone needed on the device
    with np.load(bundle / entry["data"]) as data:
        assert data["pixels"].dtype == np.uint8 and data["pixels"].shape == (2, 256, 256, 3)
        assert data["embeddings"].shape == (2, 1, entry["config"]["embed_dim"])
        assert data["reference_logits"].shape == (2, 1, 256, 256)
    assert (bundle / device_check.SITE_DIR / "segment_anything" / "__init__.py").is_file()
    assert "bundle.json" not in info["files"] and f"{device_check.SITE_DIR}/segment_anything/__init__.py" in info["files"]


def test_run_on_the_cpu_measures_and_reports(device_check, bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = device_check.main(["run", str(bundle), str(out), "--device", "cpu", "--iters", "1", "--warmup", "0",
                              "--presets", "tiny", "--variants", "fp32,bf16,compile-fp32", "--no-compile",
                              "--batches", "1"])
    results = json.loads((out / "results.json").read_text())
    assert code == 0 and results["passed"] is True and results["incomplete"] is None
    tiny = results["presets"]["tiny"]
    assert tiny["checks"]["ok"] and tiny["checks"]["inputs_ok"]  # weights and inputs rebuilt bitwise
    fp32 = tiny["variants"]["fp32"]
    assert fp32["status"] == "measured" and fp32["passed"]
    assert fp32["parity"]["dice_worst"] > 0.9999 and fp32["parity"]["max_abs_diff"] < 1e-4  # same machine, same math
    assert fp32["latency"]["1"]["timer"].startswith("host")
    assert tiny["variants"]["bf16"]["autocast"] == "bf16"
    assert tiny["variants"]["compile-fp32"] == {"status": "skipped", "reason": "--no-compile"}
    report = (out / "report.md").read_text()
    assert "| fp32 |" in report and "TensorRT" in report and "text graph on the GPU" in report
    assert any("CPU smoke run" in line for line in results["not_checked"])


def test_changed_bundle_and_missing_gpu_are_refused(device_check, bundle: Path, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_check.main(["run", str(bundle), str(tmp_path / "a")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(bundle, changed)
    (changed / "tiny.npz").write_bytes((changed / "tiny.npz").read_bytes()[:-10])
    assert device_check.main(["run", str(changed), str(tmp_path / "b"), "--device", "cpu"]) == 2
    assert "changed since prepare" in capsys.readouterr().err


def test_prepare_refuses_a_bundle_over_the_limit(device_check, tmp_path: Path, monkeypatch, capsys) -> None:
    def big_preset(preset, samples, seed, folder, log):
        (folder / f"{preset}.npz").write_bytes(b"0" * 4096)
        return {}

    monkeypatch.setattr(device_check, "prepare_preset", big_preset)
    monkeypatch.setattr(device_check, "MAX_BUNDLE_BYTES", 4000)
    target = tmp_path / "big"
    assert device_check.main(["prepare", str(target), "--presets", "tiny", "--samples", "1"]) == 2
    assert "over the" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.glob(".big.*"))  # nothing half-written left behind


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_a_killed_check_takes_its_compile_child_along(tmp_path: Path, signame: str) -> None:
    """#22 risk: the torch.compile child runs in a session of its own, out of reach of the shell's
    `timeout`; killing the check (SIGTERM from `timeout`, SIGKILL after --kill-after) must not leave
    it holding the GPU. The child here is a sleeping Python that spawned a worker of its own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "child.log"
    child = ("import os, subprocess, time; w = subprocess.Popen(['sleep', '60']); "
             "print(os.getpid(), w.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dc', {str(REPO / 'benchmarks' / 'device_check.py')!r})\n"
        "dc = importlib.util.module_from_spec(spec); spec.loader.exec_module(dc)\n"
        f"with open({str(log)!r}, 'w') as log:\n"
        f"    dc.run_capped([sys.executable, '-c', {child!r}], log, 120)\n")])
    deadline = time.time() + 60
    while not log.is_file() or not log.read_text().strip():
        assert time.time() < deadline and parent.poll() is None, "the child never started"
        time.sleep(0.1)
    pid, worker = map(int, log.read_text().split()[:2])
    parent.send_signal(getattr(signal, signame))
    parent.wait(timeout=20)
    gone = [pid, worker] if signame == "SIGTERM" else [pid]  # after SIGKILL only the direct child is reached
    deadline = time.time() + 10
    while any(map(_alive, gone)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, gone)), f"the compile child or its worker outlived the check ({signame})"
    if signame == "SIGKILL":
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_preflight_names_every_missing_module_before_any_work(device_check, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    """#22 item 3: on a bare image a missing package stops `run` at once with exit 2 and one line
    naming all of them (None in sys.modules makes an import fail as if the module were absent)."""
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    out = tmp_path / "out"
    assert device_check.main(["run", str(tmp_path / "no-bundle"), str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("device_check: missing on this machine: ")
    assert "safetensors (pip package safetensors)" in err and "PIL (pip package pillow)" in err
    assert not out.exists()  # nothing started


def _module_level_imports(roots: tuple[str, ...]) -> dict[str, set[str]]:
    """Third-party top-level names imported at module level by `roots` and every project module
    they import at module level (what importing them needs; lazy imports inside functions are not
    followed: `run` builds models without a text backbone)."""
    import ast
    import importlib.util
    import sys

    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = REPO / Path(*name.split("."))
        path = path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [importlib.util.resolve_name("." * node.level + (node.module or ""), package)]
                targets += [f"{targets[0]}.{alias.name}" for alias in node.names]  # submodules imported by name
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "lga_export":
                    todo.append(target)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(name)
    return found


def test_preflight_covers_what_run_imports(device_check) -> None:
    """The preflight's list is the packages `run`'s project modules import at module level (plus
    safetensors, loaded by the checkpoint path): a new import not listed would only fail on the
    device, as a traceback minutes in."""
    needed = set(_module_level_imports(device_check.RUN_PROJECT_MODULES)) - {"segment_anything"}  # carried
    assert needed, "no imports found: the scan is broken"
    assert needed | {"torchvision", "safetensors"} == set(device_check.RUN_REQUIREMENTS), needed

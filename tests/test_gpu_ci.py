"""The GPU CI (benchmarks/gpu_check.sh, .github/workflows/gpu-bench.yml) checked without a GPU:
its install set, its probe, its venv handling.

What these prove and what not: `test_install_set_resolves_to_the_gpu_stack` resolves the install
set against the real package index (PyPI), so the versions, the CUDA major of each GPU package and
the absence of the CPU `onnxruntime` are facts of today's index - except TensorRT's payload:
`tensorrt-cu13`'s own metadata is read, but its `tensorrt_cu13_libs`/`_bindings` are stubs that
download from https://pypi.nvidia.com when built, which this machine cannot reach, so they are not
resolved. Nothing here installs or runs CUDA code; the venv test runs the script with fake
`python3 -m venv`/pip (fake-backed).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_probe  # noqa: E402

# import name -> distribution name, for what the probe requires
DISTRIBUTIONS = {"segment_anything": "segment-anything", "lga_export": "lga-export"}


def _install_set() -> str:
    match = re.search(r'^INSTALL_SET="([^"]+)"', GPU_CHECK.read_text(), re.M)
    assert match, "gpu_check.sh declares no INSTALL_SET"
    return match.group(1)


def _closure(extras: list[str], table: dict[str, list[str]], seen: set[str] | None = None) -> list[str]:
    """Every requirement the extras pull in, following lga-export[...] self-references."""
    seen = set() if seen is None else seen
    found: list[str] = []
    for extra in extras:
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in table[extra]:
            inner = re.match(r"lga-export\[([^\]]+)\]", requirement)
            found += _closure(inner.group(1).split(","), table, seen) if inner else [requirement]
    return found


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;~]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _install_requirements() -> list[str]:
    extras = re.fullmatch(r"\.\[([^\]]+)\]", _install_set())
    assert extras, _install_set()
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return _closure(extras.group(1).split(","), table)


def test_install_set_names_the_gpu_stack() -> None:
    """Issue #22 bug 1: `.[gpu,tensorrt]` held no torch, no export tooling, no matplotlib."""
    names = {_name(r) for r in _install_requirements()}
    assert {"torch", "torchvision", "onnx", "onnxruntime-gpu", "polygraphy", "matplotlib",
            "segment-anything", "transformers"} <= names, names
    assert any(n.startswith("tensorrt") for n in names) and "onnxruntime" not in names


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _dry_run(tmp_path: Path, name: str, *args: str) -> dict[str, dict]:
    """pip's resolution (nothing installed): distribution name -> its report entry."""
    report = tmp_path / f"{name}.json"
    env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_CONFIG_FILE": os.devnull}  # today's index, no local caps
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--report", str(report), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {_name(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}


def test_install_set_resolves_to_the_gpu_stack(tmp_path: Path) -> None:
    """pip resolves gpu_check.sh's install set: every package a step imports, onnxruntime-gpu and
    never the CPU onnxruntime, one CUDA major (13) across torch, onnxruntime-gpu and TensorRT."""
    if not _index_reachable():
        pytest.skip("no route to the package index (pypi.org)")
    requirements = _install_requirements()
    trt = [r for r in requirements if _name(r).startswith("tensorrt")]
    rest = [r for r in requirements if r not in trt]
    resolved = _dry_run(tmp_path, "stack", ".", *rest)  # the project, its extras' closure but TensorRT
    front = _dry_run(tmp_path, "tensorrt", "--no-deps", *trt)  # the stub payload is NVIDIA-hosted
    names = set(resolved) | set(front)
    for module in gpu_probe.REQUIRED:
        assert DISTRIBUTIONS.get(module, module) in names, module
    assert {"onnxruntime-gpu", "polygraphy", "matplotlib", "torch", "onnx"} <= names
    assert "onnxruntime" not in names, "the CPU onnxruntime would shadow onnxruntime-gpu"
    torch_deps = " ".join(resolved["torch"]["metadata"].get("requires_dist", []))
    assert re.search(r"cuda-toolkit\[[^\]]*\]==13\.", torch_deps), torch_deps
    assert resolved["nvidia-cuda-runtime"]["metadata"]["version"].startswith("13.")  # onnxruntime-gpu[cuda]
    assert "nvidia-cudnn-cu13" in resolved
    [(trt_name, trt_entry)] = front.items()
    assert trt_name == "tensorrt-cu13", trt_name
    payload = trt_entry["metadata"].get("requires_dist", [])
    version = trt_entry["metadata"]["version"]
    assert payload and all(re.fullmatch(rf"tensorrt[_-]cu13[_-]\w+==({re.escape(version)})", p) for p in payload
                           if "extra ==" not in p), payload


def _heredoc_imports() -> set[str]:
    """Top-level modules imported by the Python the script runs inline."""
    text = GPU_CHECK.read_text()
    blocks = re.findall(r"<<'PYEOF'\n(.*?)\nPYEOF", text, re.S)
    found = set()
    for block in blocks:
        found |= set(re.findall(r"^(?:from|import) ([A-Za-z_]\w*)", block, re.M))
    return found


def test_probe_covers_every_module_the_steps_import() -> None:
    stdlib = set(sys.stdlib_module_names)
    assert _heredoc_imports() - stdlib <= set(gpu_probe.REQUIRED) | set(gpu_probe.BACKENDS)


def test_probe_import_list_runs_in_the_dev_venv(tmp_path: Path) -> None:
    """The probe's import list imports here (the dev venv: the same packages, CPU builds); with no
    GPU it fails on that, by name - never on an import, never with a traceback."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_probe.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["missing"] == [], env
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if env["cuda_available"]:
        assert result.returncode == 0
    else:
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("no CUDA GPU")
        assert env["ort_gpu_ok"] is False and env["trt_ok"] is False


def test_probe_names_a_missing_module(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(gpu_probe.REQUIRED, "lga_no_such_module", "a test")
    assert gpu_probe.probe(tmp_path) == 1
    assert "lacks lga_no_such_module (a test)" in capsys.readouterr().err


FAKE_PYTHON3 = """#!/usr/bin/env bash
# python3 -m venv DIR makes a fake venv (pip and python that answer like a good install); the
# rest goes to the real interpreter.
if [[ "${1:-}" == "-m" && "${2:-}" == "venv" ]]; then
    mkdir -p "$3/bin"
    cat > "$3/bin/pip" <<'EOF'
#!/usr/bin/env bash
echo "pip $*" >> "$(dirname "$0")/../pip.log"
case "$1 ${2:-}" in
    "show onnxruntime") exit 1 ;;
    "show onnxruntime-gpu") printf 'Name: onnxruntime-gpu\\nVersion: 1.31.1\\n' ;;
esac
exit 0
EOF
    cat > "$3/bin/python" <<'EOF'
#!/usr/bin/env bash
if [[ "${1:-}" == "-c" ]]; then echo "lga_export 0.1.0 onnxruntime 1.31.1"; exit 0; fi
echo "no CUDA GPU visible to torch (fake venv)" >&2
exit 1
EOF
    chmod +x "$3/bin/pip" "$3/bin/python"
    exit 0
fi
exec REAL_PYTHON "$@"
"""


def _run_check(tmp_path: Path, venv: Path, *args: str) -> tuple[dict[str, str], str]:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    real = subprocess.run(["bash", "-c", "command -v python3"], capture_output=True, text=True).stdout.strip()
    (shims / "python3").write_text(FAKE_PYTHON3.replace("REAL_PYTHON", real))
    (shims / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "GPU_CHECK_VENV": str(venv)}
    subprocess.run(["bash", str(GPU_CHECK), "--budget", "60", *args, str(out)], env=env, capture_output=True,
                   text=True, timeout=120)
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    return {r[0]: r[1] for r in rows}, (out / "logs" / "setup.log").read_text()


def test_a_half_built_venv_is_rebuilt(tmp_path: Path) -> None:
    """Issue #22 bug 7 (fake-backed: fake venv and pip). A setup killed mid-install leaves the
    venv with the owner marker but no stamp; the next run (with or without --fresh) rebuilds it
    instead of refusing it as someone else's."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".gpu-check-owner").touch()  # what `python3 -m venv` + the marker left before pip died
    steps, log = _run_check(tmp_path, venv, "--fresh")
    assert steps["setup"] == "OK", log
    assert "from scratch" in log and (venv / ".gpu-check-stamp").is_file()
    assert "install --quiet --extra-index-url" in (venv / "pip.log").read_text()
    assert ".[gpu-bench]" in (venv / "pip.log").read_text()
    assert steps["probe"] == "FAILED"  # the fake venv has no GPU: later steps are skipped with its reason


def test_a_foreign_venv_is_still_refused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)  # no stamp, no owner marker: not ours
    steps, log = _run_check(tmp_path, venv, "--fresh")
    assert steps["setup"] == "FAILED" and "not made by gpu_check.sh" in log
    assert (venv / "bin").is_dir()


def test_ci_keeps_the_venv_outside_the_checkout() -> None:
    """Issue #22 bug 7: actions/checkout cleans ignored files, so a venv inside the checkout is
    reinstalled (torch + TensorRT) on every run."""
    workflow = (REPO / ".github" / "workflows" / "gpu-bench.yml").read_text()
    match = re.search(r'GPU_CHECK_VENV="\$\{GPU_CHECK_VENV:-([^}]+)\}"', workflow)
    assert match and not match.group(1).startswith(("$GITHUB_WORKSPACE", "${{ github.workspace", ".")), workflow

"""The device check proven on a simulated bare GPU image, on this CPU machine.

Why: a lent GPU machine gets one or two tries within minutes of device time, starts bare (a Python
with PyTorch, torchvision, safetensors, Pillow, numpy, onnx, CPU onnxruntime, transformers and
timm; no network; no lga-export) and receives only the working tree plus the carried bundle. A
missing import or file found there wastes a try. This rebuilds that situation here and runs the
same entry point, so such a gap fails here first:

1. a venv with exactly those packages and what they require, pinned to the dev venv's versions and
   installed with --no-deps (kept in ~/.cache/lga-export/bare-device-venv and reused; no
   lga-export, no segment-anything);
2. a bundle from `device_check.py prepare` (or --bundle DIR), a clean copy of the working tree
   (`git archive HEAD`, or with --worktree the files the device tool carries), laid out as on the
   device; the total must stay under 48 MiB;
3. `benchmarks/device_check.sh OUT runs/device_bundle --device cpu ...` under the planned call's
   caps, in an empty environment, without network where `unshare --net` is allowed;
4. results.json checked: exit 0, every variant measured or skipped with a reason.

    .venv/bin/python benchmarks/simulate_bare_device.py OUTDIR [--presets tiny] [-- RUN FLAGS]

OUTDIR gets simulation.json (the figures), bundle/, image/repo (what travels) and device_check/.
Exit code: 0 passed, 1 the device check failed or its results are incomplete, 2 setup problem.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What the lent GPU image has preinstalled (CPU torch stands in for its CUDA build here).
BARE_IMAGE_PACKAGES = ("torch", "torchvision", "safetensors", "pillow", "numpy", "onnx", "onnxruntime",
                       "transformers", "timm")
NOT_ON_IMAGE = ("lga_export", "segment_anything")  # import names that must not resolve in the venv
DEFAULT_VENV = Path(os.environ.get("LGA_BARE_VENV", Path.home() / ".cache" / "lga-export" / "bare-device-venv"))
STAMP = ".bare-image-stamp"
OWNER = ".bare-image-owner"
MAX_TRAVEL_BYTES = 48 << 20
RUN_CAP_S = 420  # the planned GPU call's caps (benchmarks/README.md, "The first GPU minutes")
COMPILE_CAP_S = 120
DEFAULT_RUN_FLAGS = ["--batches", "1", "--iters", "2", "--warmup", "1"]


class SimError(Exception):
    """A setup problem: one line, exit code 2."""


def log(message: str) -> None:
    print(f"simulate: {message}", flush=True)


def nice(command: list[str]) -> list[str]:
    """Everything here yields to other work on the machine (a 2-core box shared with training)."""
    return ["nice", "-n", "19", *command]


def bare_requirements(roots: tuple[str, ...] = BARE_IMAGE_PACKAGES) -> list[str]:
    """`name==version` for the roots and everything they require (extras followed), read from the
    interpreter running this (the dev venv), so the bare venv has the tested versions."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    versions: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in roots]
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SimError(f"{name} is not installed in {sys.prefix}; run this with the dev venv "
                           f"(.venv/bin/python benchmarks/simulate_bare_device.py)") from None
        versions[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not marker.evaluate({"extra": extra}):
                continue
            if extra and (marker is None or "extra" not in str(marker)):
                continue  # already followed with the base requirements
            todo.append((requirement.name, ""))
            todo.extend((requirement.name, e) for e in requirement.extras)
    return [f"{name}=={versions[name]}" for name in sorted(versions)]


def _venv_stamp(requirements: list[str]) -> str:
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    text = "\n".join([str(base), sys.version, *requirements])
    return hashlib.sha256(text.encode()).hexdigest()


def _missing_on_image(python: Path) -> list[str]:
    """Import names of NOT_ON_IMAGE that the venv resolves (run from / so no checkout is on the path)."""
    probe = ("import importlib.util, sys; "
             f"print(','.join(m for m in {NOT_ON_IMAGE!r} if importlib.util.find_spec(m)))")
    found = subprocess.run([str(python), "-I", "-c", probe], cwd="/", capture_output=True, text=True, check=True)
    return [m for m in found.stdout.strip().split(",") if m]


def ensure_venv(venv: Path, requirements: list[str], fresh: bool) -> Path:
    """The bare-image venv, built once per package set and reused (it is GBs: torch's CUDA libraries)."""
    python = venv / "bin" / "python"
    stamp = _venv_stamp(requirements)
    if not fresh and (venv / STAMP).is_file() and (venv / STAMP).read_text().strip() == stamp and python.is_file():
        log(f"reusing the bare venv {venv}")
        return python
    if venv.exists():
        if not (venv / STAMP).is_file() and not (venv / OWNER).is_file():
            raise SimError(f"{venv} exists and was not made by this script; remove it or pass --venv another folder")
        shutil.rmtree(venv)
    log(f"building the bare venv {venv} ({len(requirements)} packages, --no-deps; minutes the first time)")
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run(nice([str(base), "-m", "venv", "--without-pip", str(venv)]), check=True)
    (venv / OWNER).write_text("made by benchmarks/simulate_bare_device.py\n")
    (venv / "requirements.txt").write_text("\n".join(requirements) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]  # the dev venv's pip, no ensurepip
    with open(venv / "install.log", "w") as install_log:
        code = subprocess.run(nice([*pip, "install", "--no-input", "--no-deps", "-r", str(venv / "requirements.txt")]),
                              stdout=install_log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SimError(f"pip could not install the bare image's packages (exit {code}); see {venv / 'install.log'}")
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SimError(f"the bare venv's requirements are incomplete: {check.stdout.strip().splitlines()[0]}")
    present = _missing_on_image(python)
    if present:
        raise SimError(f"the bare venv can import {present}, which the GPU image lacks; rebuild with --fresh-venv")
    (venv / STAMP).write_text(stamp + "\n")
    return python


def stage_tree(dest: Path, worktree: bool) -> None:
    """A clean copy of the repository: HEAD's files, or (worktree) what the device tool carries:
    tracked and untracked-but-not-ignored files as they are now."""
    dest.mkdir(parents=True)
    if not worktree:
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SimError("git archive HEAD failed; run this inside the repository's checkout")
        return
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = REPO / relative
        if source.is_file() and not source.is_symlink():  # a tracked file deleted here is not carried
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def make_bundle(dest: Path, presets: str, samples: int) -> None:
    """`device_check.py prepare` with this (the dev) interpreter, as on the CPU machine before the call."""
    log(f"prepare: {presets}, {samples} samples -> {dest}")
    command = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "prepare", str(dest),
               "--presets", presets, "--samples", str(samples), "--force"]
    if subprocess.run(nice(command)).returncode != 0:
        raise SimError("device_check.py prepare failed (its message is above)")


def network_isolation() -> list[str]:
    """`unshare --net` where this machine allows it (the device has no network), else nothing."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net"]
    return []


def hide_modules(folder: Path, modules: list[str]) -> None:
    """Stub packages that fail to import as if absent (PYTHONPATH comes before site-packages)."""
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}' (hidden by simulate_bare_device)\", "
            f"name={module!r})\n")


def device_env(python: Path, home: Path, caps: tuple[int, int], hidden: Path | None) -> dict[str, str]:
    """An empty environment like a fresh machine's: the venv's python3 first on PATH, an empty HOME
    and TMPDIR (no Hugging Face or inductor caches), Hugging Face offline, the planned call's caps."""
    (home / "tmp").mkdir(exist_ok=True)
    env = {"PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "TMPDIR": str(home / "tmp"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RUN_CAP_S": str(caps[0]), "COMPILE_CAP_S": str(caps[1])}
    env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})  # this machine's CPU needs them
    if hidden is not None:
        env["PYTHONPATH"] = str(hidden)
    return env


def check_results(results_file: Path, presets: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Each variant's status and what is wrong: every requested variant of every preset must be
    measured within tolerance or skipped with a reason, and the run complete and passed."""
    if not results_file.is_file():
        return {}, [f"{results_file} was not written"]
    results = json.loads(results_file.read_text())
    statuses: dict[str, dict[str, str]] = {}
    problems = [f"incomplete: {results['incomplete']}"] if results.get("incomplete") else []
    for preset in presets:
        result = results["presets"].get(preset)
        if result is None or "error" in result:
            problems.append(f"{preset}: {'not in results.json (cut short?)' if result is None else result['error']}")
            continue
        for name in results["settings"]["variants"]:
            variant = result["variants"].get(name, {"status": "absent"})
            status, reason = variant.get("status"), variant.get("reason")
            statuses.setdefault(preset, {})[name] = f"{status}: {reason}" if reason else str(status)
            if status == "measured" and not variant.get("passed"):
                problems.append(f"{preset} {name}: out of tolerance: {'; '.join(variant.get('problems', []))}")
            elif status not in ("measured", "skipped") or (status == "skipped" and not reason):
                problems.append(f"{preset} {name}: {status}{': ' + reason if reason else ''}")
    if not results.get("passed") and not problems:
        problems.append("results.json says passed: false")
    return statuses, problems


def run_device_check(repo: Path, out: Path, env: dict[str, str], flags: list[str]) -> tuple[list[str], int, float]:
    """The device's own entry point, from the staged copy, as the planned call runs it."""
    command = nice([*network_isolation(), "bash", "benchmarks/device_check.sh", str(out), "runs/device_bundle",
                    "--device", "cpu", *flags])
    log(f"run: {' '.join(command)} (RUN_CAP_S={env['RUN_CAP_S']}, COMPILE_CAP_S={env['COMPILE_CAP_S']})")
    started = time.perf_counter()
    code = subprocess.run(command, cwd=repo, env=env).returncode
    return command, code, round(time.perf_counter() - started, 1)


def stage(out: Path, bundle: Path | None, presets: str, samples: int, worktree: bool) -> dict[str, Any]:
    """OUT/image/repo as it lands on the device (tree + runs/device_bundle), and its size."""
    if bundle is None:
        bundle = out / "bundle"
        make_bundle(bundle, presets, samples)
    if not (bundle / "bundle.json").is_file():
        raise SimError(f"{bundle} holds no bundle.json; make it with: python benchmarks/device_check.py prepare {bundle}")
    image = out / "image"
    if image.exists():
        shutil.rmtree(image)
    repo = image / "repo"
    stage_tree(repo, worktree)
    tree_bytes = folder_bytes(repo)
    shutil.copytree(bundle, repo / "runs" / "device_bundle")  # exactly what prepare wrote
    (image / "home").mkdir()
    total = folder_bytes(repo)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    travel = {"tree_bytes": tree_bytes, "bundle_bytes": total - tree_bytes, "total_bytes": total,
              "total_mib": round(total / 2**20, 2), "limit_mib": MAX_TRAVEL_BYTES >> 20,
              "tree": "working tree as the device tool carries it" if worktree else f"git archive HEAD ({head[:12]})"}
    log(f"travels: {travel['total_mib']} MiB ({tree_bytes / 2**20:.2f} tree + "
        f"{travel['bundle_bytes'] / 2**20:.2f} bundle; limit {MAX_TRAVEL_BYTES >> 20} MiB)")
    if total > MAX_TRAVEL_BYTES:
        raise SimError(f"{travel['total_mib']} MiB would travel, over {MAX_TRAVEL_BYTES >> 20} MiB; "
                       f"prepare fewer --samples or keep large files out of the tree")
    return {"repo": repo, "home": image / "home", "travel": travel}


def verdict(out: Path, code: int, presets: list[str], hidden: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Statuses and problems. With hidden modules the check must stop in its preflight: exit 2,
    naming every one of them."""
    if hidden:
        text = (out / "run.log").read_text() if (out / "run.log").is_file() else ""
        unnamed = [m for m in hidden if m not in text]
        problems = [] if code == 2 and not unnamed else [f"expected exit 2 naming {hidden}, got {code} "
                                                           f"(not named: {unnamed})"]
        return {}, problems
    statuses, problems = check_results(out / "results.json", presets)
    if code != 0:
        problems.insert(0, f"device_check.sh exited {code}")
    return statuses, problems


def simulate(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    requirements = bare_requirements()
    python = ensure_venv(args.venv.resolve(), requirements, args.fresh_venv)
    setup_s = round(time.perf_counter() - started, 1)
    staged = stage(out, args.bundle.resolve() if args.bundle else None, args.presets, args.samples, args.worktree)
    hidden = out / "image" / "hidden" if args.hide else None
    if hidden is not None:
        hide_modules(hidden, args.hide)
    env = device_env(python, staged["home"], (args.run_cap, args.compile_cap), hidden)
    presets = args.presets.split(",")
    flags = ["--presets", args.presets, *(args.run_flags or DEFAULT_RUN_FLAGS)]
    check_out = out / "device_check"
    if check_out.exists():
        shutil.rmtree(check_out)
    command, code, seconds = run_device_check(staged["repo"], check_out, env, flags)
    statuses, problems = verdict(check_out, code, presets, args.hide)
    record = {"format": "lga-bare-device-simulation/1", "passed": not problems, "problems": problems,
              "exit_code": code, "run_seconds": seconds, "setup_seconds": setup_s,
              "total_seconds": round(time.perf_counter() - started, 1), "caps_s": {"run": args.run_cap,
              "compile": args.compile_cap}, "travel": staged["travel"], "results": str(check_out / "results.json"),
              "variants": statuses, "command": command, "network": "none (unshare --net)" if "unshare" in command
              else "not isolated here (unshare not allowed); Hugging Face offline", "hidden_modules": args.hide,
              "venv": {"path": str(python.parent.parent), "python": sys.version.split()[0], "packages": requirements,
                       "note": "the GPU image has Python 3.12 and a CUDA 13 torch; this venv has the dev venv's "
                               "interpreter and torch build, run on the CPU"}}
    (out / "simulation.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"{'PASSED' if not problems else 'FAILED'}: device_check.sh exit {code} in {seconds} s "
        f"(setup {setup_s} s); {out / 'simulation.json'}")
    for problem in problems:
        log(f"  {problem}")
    return 0 if not problems else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                  epilog="Flags after -- go to device_check.py run (default: "
                                         f"{' '.join(DEFAULT_RUN_FLAGS)}).")
    top.add_argument("out", type=Path, help="output folder")
    top.add_argument("--bundle", type=Path, help="a bundle made by device_check.py prepare (default: prepare one)")
    top.add_argument("--presets", default="tiny", help="presets to prepare and run: tiny, vit_b or both (default tiny)")
    top.add_argument("--samples", type=int, default=4, help="prepare's samples per preset (default 4)")
    top.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the bare venv (default {DEFAULT_VENV})")
    top.add_argument("--fresh-venv", action="store_true", help="rebuild the bare venv")
    top.add_argument("--worktree", action="store_true",
                     help="stage the working tree as the device tool carries it, not git HEAD")
    top.add_argument("--hide", action="append", default=[], metavar="MODULE",
                     help="make MODULE fail to import there (the preflight must exit 2 naming it)")
    top.add_argument("--run-cap", type=int, default=RUN_CAP_S, help=f"RUN_CAP_S (default {RUN_CAP_S})")
    top.add_argument("--compile-cap", type=int, default=COMPILE_CAP_S, help=f"COMPILE_CAP_S (default {COMPILE_CAP_S})")
    return top


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.run_flags = run_flags
    try:
        return simulate(args)
    except SimError as exc:
        print(f"simulate_bare_device: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"simulate_bare_device: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode}); "
              f"its output is above", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

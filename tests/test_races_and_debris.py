"""Races, debris and signals (#21 item 4): eval publishes its three files together, a second writer
of one output is refused while the first writes, what a SIGKILLed run left is cleaned by the next
run (never taken for an output), and SIGTERM ends `train` and `predict --ray` with 130 and one line."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lga_export.cli.main import app
from lga_export.errors import LGAError
from lga_export.fileio import atomic_dir, atomic_file, atomic_files

from lga_export.loading import embedded_checkpoint

TINY = str(embedded_checkpoint("tiny"))  # a small model: these tests are about files, not masks

CLI = [sys.executable, "-m", "lga_export.cli.main"]


def _lvit(root: Path, size: tuple[int, int] = (64, 48), per_split: int = 4) -> Path:
    """An LViT dataset (Train and Val) of `per_split` random images with square lesions and reports."""
    rng = np.random.default_rng(0)
    for split in ("Train", "Val"):
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        rows = []
        for index in range(per_split):
            name = f"{split.lower()}_{index}.png"
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / "img" / name)
            mask = np.zeros(size[::-1], np.uint8)
            mask[8 + index:24 + index, 8:30] = 255
            Image.fromarray(mask).save(folder / "labelcol" / f"mask_{name}")
            rows.append(f'mask_{name},"Unilateral pulmonary infection, one infected area, lower left lung."\n')
        (folder / f"{split}_text.csv").write_text("Image,Description\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def checkpoint(default_model, tmp_path_factory) -> Path:
    from lga_export.checkpoint import save_lga_checkpoint

    return save_lga_checkpoint(default_model, tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """Eight built-in X-rays and their table."""
    from lga_export.samples import synthetic_samples

    root = tmp_path_factory.mktemp("imgs")
    folder = root / "img"
    folder.mkdir()
    rows = []
    for index, sample in enumerate(synthetic_samples(8)):
        Image.fromarray(sample.rgb).save(folder / f"s{index}.png")
        rows.append(f's{index}.png,"{sample.text}"\n')
    table = root / "t.csv"
    table.write_text("Image,Description\n" + "".join(rows))
    return folder, table


def test_eval_publishes_its_files_together(checkpoint, tmp_path, monkeypatch) -> None:
    """A full disk while drawing cases.png leaves none of the three files (it left per_sample.csv,
    and the next run then refused without --force); the rerun writes all three."""
    import lga_export.training.plots as plots

    data, out = _lvit(tmp_path / "data"), tmp_path / "eval"
    real = plots.cases_figure

    def disk_full(cases, path, force=False):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "cases_figure", disk_full)
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--batch-size", "2"]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 2 and "No space left" in failed.stderr, failed.stderr
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    monkeypatch.setattr(plots, "cases_figure", real)
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cases.png", "per_sample.csv", "summary.json"]


def test_a_second_predict_into_an_output_being_written_is_refused(images, tmp_path) -> None:
    """While another run writes --out (staged, not yet published), predict into it says so in one
    line and exit 2 (it used to publish too, and the first run's publish then replaced its files)."""
    folder, table = images
    out = tmp_path / "out"
    with atomic_files(out, ["first_mask.png"]) as staged:
        staged["first_mask.png"].write_bytes(b"the first run's")
        result = CliRunner().invoke(app, ["predict", "--model", TINY, "--images", str(folder), "--text-file", str(table),
                                          "--out", str(out)])
        assert result.exit_code == 2, result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "another lga-export run" in lines[0] and str(out) in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == ["first_mask.png"]  # one run's complete output


def test_a_second_export_into_a_folder_being_written_is_refused(tmp_path) -> None:
    out = tmp_path / "onnx"
    with atomic_dir(out) as staged:
        (staged / "manifest.json").write_text("{}")
        result = CliRunner().invoke(app, ["onnx", "--checkpoint", TINY, "--out", str(out), "--no-validate"])
        assert result.exit_code == 2, result.stdout + result.stderr
        assert "another lga-export run" in result.stderr and str(out) in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def _killed_while_staging(out: Path, command: list[str], staged: str, timeout: float = 180) -> None:
    """Run `command`, SIGKILL it as soon as `staged` (a glob) shows its staging area, reap it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None and not list(out.glob(staged)):
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        assert list(out.glob(staged)), "the run never staged its outputs"
        time.sleep(0.3)
    finally:
        process.kill()
        process.wait()


def test_a_sigkilled_predict_leaves_nothing_the_next_run_keeps(images, tmp_path) -> None:
    folder, table = images
    out = tmp_path / "out"
    args = ["predict", "--model", TINY, "--images", str(folder), "--text-file", str(table), "--out", str(out)]
    _killed_while_staging(out, CLI + args, ".staged.*")
    assert list(out.glob(".staged.*")), "SIGKILL left the staging folder (the debris this test is about)"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"s{i}_{kind}.png" for i in range(8)
                                                             for kind in ("mask", "overlay"))


_HOLD = """
import sys, time
from pathlib import Path
from lga_export.fileio import atomic_dir, atomic_file
kind, target = sys.argv[1], Path(sys.argv[2])
with (atomic_dir(target) if kind == "dir" else atomic_file(target)) as staged:
    (staged / "graph.onnx" if kind == "dir" else staged).write_bytes(b"x" * (8 << 20))
    print("staged", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_what_a_sigkilled_writer_left_is_removed_by_the_next_write(kind, tmp_path) -> None:
    """Export folders (atomic_dir) and single files such as checkpoints (atomic_file): the killed
    writer's 8 MB staging is gone after the next write of the same target, which succeeds."""
    target = tmp_path / ("export" if kind == "dir" else "model.safetensors")
    process = subprocess.Popen([sys.executable, "-c", _HOLD, kind, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "staged"
    finally:
        process.kill()
        process.wait()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")], "nothing was left to clean"
    if kind == "dir":
        with atomic_dir(target) as staged:
            (staged / "graph.onnx").write_bytes(b"new")
        assert (target / "graph.onnx").read_bytes() == b"new"
    else:
        with atomic_file(target) as staged:
            staged.write_bytes(b"new")
        assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_folder_moved_aside_by_a_killed_replace_comes_back(tmp_path) -> None:
    """Killed between moving the old export aside and renaming the new one in: the old one is the
    last complete output, so the next run puts it back (and refuses to replace it without force)."""
    target = tmp_path / "export"
    backup = tmp_path / ".export.old"
    backup.mkdir()
    (backup / "graph.onnx").write_bytes(b"old")
    with pytest.raises(LGAError, match="already exists"):
        with atomic_dir(target):
            pass
    assert (target / "graph.onnx").read_bytes() == b"old" and not backup.exists()


def _stderr_lines(process: subprocess.Popen, timeout: float) -> list[str]:
    _, stderr = process.communicate(timeout=timeout)
    return [line for line in stderr.splitlines() if line.strip()]


def test_sigterm_ends_train_with_130_and_keeps_its_state(tmp_path) -> None:
    """It exited 2 ("interrupted" reported as a bad input); the state is still saved for --resume."""
    data, out = _lvit(tmp_path / "data", size=(96, 96), per_split=8), tmp_path / "run"
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(CLI + ["train", "--preset", "tiny", "--data", str(data), "--out", str(out),
                                          "--epochs", "200", "--batch-size", "2", "--no-augment", "--threads", "1"],
                                   stdout=subprocess.DEVNULL, stderr=handle, text=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and process.poll() is None and "training tiny" not in log.read_text():
                time.sleep(0.2)
            assert process.poll() is None, log.read_text()
            time.sleep(3)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            process.kill()
            process.wait()
    lines = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip()]
    assert process.returncode == 130, lines[-5:]
    interrupted = [line for line in lines if "interrupted" in line]
    assert len(interrupted) == 1 and "--resume" in interrupted[0] and interrupted == lines[-1:], lines[-5:]
    assert "Traceback" not in log.read_text() and (out / "last" / "state.pt").is_file()


def test_sigterm_ends_predict_ray_with_130_and_one_line(images, tmp_path) -> None:
    """It exited 15 with Ray's stack dump (ray.init's own SIGTERM handler), or hung when the signal
    came while Ray started; now: 130, one line, nothing written."""
    pytest.importorskip("ray", reason="ray is not installed (pip install \"lga-export[serve]\")")
    folder, table = images
    out = tmp_path / "out"
    process = subprocess.Popen(CLI + ["predict", "--model", TINY, "--ray", "--workers", "1", "--images", str(folder), "--text-file",
                                      str(table), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None and not list(out.glob(".staged.*")):
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read()
        time.sleep(4)  # Ray is starting (or started): both are covered by the one handler
        process.send_signal(signal.SIGTERM)
        lines = _stderr_lines(process, 180)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, lines
    assert lines[-1] == "interrupted; no partial output was kept", lines
    assert not [line for line in lines if line.startswith(("Traceback", "***", "Fatal")) or "Stack trace" in line
                or "SIGTERM" in line], lines  # no stack dump of Ray's
    assert not out.exists()


_INTERRUPTED_IN_EXEC = """
import typer
from lga_export.cli.common import user_errors

app = typer.Typer()

@app.command()
@user_errors
def run() -> None:
    exec("raise KeyboardInterrupt")  # as when a signal lands in a library's exec()-generated code

if __name__ == "__main__":
    app()
"""


def test_an_interrupt_inside_exec_code_still_exits_130_under_python_m(tmp_path) -> None:
    """CPython remembers a KeyboardInterrupt that left exec()'d code and, under `python -m`, killed
    the process with SIGINT at exit even though user_errors had handled it (CI: -2, not 130)."""
    (tmp_path / "interrupted_cli.py").write_text(_INTERRUPTED_IN_EXEC)
    result = subprocess.run([sys.executable, "-m", "interrupted_cli"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["interrupted; no partial output was kept"], result.stderr

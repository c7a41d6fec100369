"""Cached artefacts are verified like the export they came from (issue #21, item 1).

What runs from a cache - ONNX Runtime's optimised graph, OpenVINO's compiled blob - is checked
against its entry's record before use: another model's entry under this key, bit rot, a tampered
but valid ONNX graph, a symlinked entry, a replaced text-graph entry are each discarded and rebuilt
with one stderr line, and the masks are those of an uncached run. A cache folder others can write
and an invalid size cap are one-line errors. The embedded default model (A) and a copy with
perturbed weights (B, the "other model") are exported once for the module.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lga_export.errors import LGAError
from lga_export.runtime.sample_runs import run_samples
from lga_export.samples import validation_samples

pytest.importorskip("openvino")

KIND = {"ort": "onnxruntime", "ov": "openvino"}
STATUS = {"ort": "optimized_cache", "ov": "compiled_cache"}
WARNING = "warning: cache entry "


@pytest.fixture(scope="module")
def exports(default_model, tmp_path_factory) -> dict[str, Path]:
    """'a': the default model; 'b': the same architecture with every weight perturbed (another model)."""
    import copy

    import torch

    from lga_export.export.exporter import export_onnx

    other = copy.deepcopy(default_model)
    torch.manual_seed(21)
    with torch.no_grad():
        for param in other.parameters():
            if param.dtype.is_floating_point and param.numel() > 1:
                param.add_(torch.randn_like(param) * 0.5 * float(param.std()))
    folders = {}
    for name, model in (("a", default_model), ("b", other)):
        folders[name] = tmp_path_factory.mktemp(f"trust-{name}") / "onnx"
        export_onnx(model, folders[name], validate=False, log=lambda _: None)
    return folders


@pytest.fixture(scope="module")
def samples(data_root):
    return validation_samples(2, data_root)[0]


def _run(backend: str, export: Path, samples, **options) -> tuple[np.ndarray, np.ndarray, dict]:
    """(masks, text embeddings, /v1/model's identity) of one activated runner."""
    from lga_export.runtime.registry import open_runner
    from lga_export.serve.codec import model_identity

    with open_runner(backend, export, **options) as runner:
        outputs = run_samples(runner, samples, 1)
        identity = model_identity(runner, export)
    return outputs.logits > 0, outputs.text_embedding, identity


@pytest.fixture(scope="module")
def uncached(exports, samples) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Backend -> masks and text embeddings of model A without any cache (the truth)."""
    found = {}
    for backend in KIND:
        masks, text, _ = _run(backend, exports["a"], samples, cache_dir=False)
        found[backend] = masks, text
    return found


@pytest.fixture(scope="module")
def other_cache(exports, samples, tmp_path_factory) -> Path:
    """A cache root filled by model B on both backends."""
    root = tmp_path_factory.mktemp("other-cache") / "cache"
    previous = os.environ.get("LGA_EXPORT_CACHE")
    os.environ["LGA_EXPORT_CACHE"] = str(root)
    try:
        for backend in KIND:
            _run(backend, exports["b"], samples)
    finally:
        os.environ.pop("LGA_EXPORT_CACHE") if previous is None else os.environ.update(LGA_EXPORT_CACHE=previous)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entries(root: Path, graph: str) -> list[Path]:
    """The cache entries (files or folders) of `graph` directly under `root`."""
    return sorted(p for p in root.iterdir() if p.name.startswith(graph) and not p.name.startswith("."))


def _payload(entry: Path) -> Path:
    """The file that runs: the entry itself, or the largest file in it."""
    return entry if entry.is_file() else max((p for p in entry.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)


def _plant(target: Path, source: Path) -> None:
    """Put a copy of entry `source` under `target`'s name, its payload renamed to `target`'s
    (OpenVINO looks a blob up by its own name), as an attacker who knows the key would."""
    payload_name = _payload(target).name
    _remove(target)
    if source.is_file():
        shutil.copy2(source, target)
        return
    shutil.copytree(source, target)
    os.replace(_payload(target), target / payload_name)


def _remove(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    else:
        shutil.rmtree(entry)


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(WARNING)]


def _assert_rebuilt(backend, exports, samples, uncached, capsys, tampered: list[Path], reason: str) -> None:
    """A run on the tampered cache gives the uncached masks, one line per tampered entry, and
    /v1/model calls the entry rebuilt (with the reason), never a hit; the next run is a clean hit."""
    capsys.readouterr()
    masks, text, identity = _run(backend, exports["a"], samples)
    lines = _warnings(capsys)
    assert np.array_equal(masks, uncached[backend][0]), "the tampered cache entry was used"
    np.testing.assert_allclose(text, uncached[backend][1], atol=1e-5)
    assert len(lines) == len(tampered), lines
    for line, entry in zip(sorted(lines), sorted(tampered)):
        assert f"{entry} was not used and is rebuilt: " in line and reason in line, line
    startup = identity["runner"]["startup"]
    graphs = {entry.name.split(".")[0].split("-")[0] for entry in tampered}
    for graph in graphs:
        assert startup[graph][STATUS[backend]] == "rebuilt", startup
        assert reason in startup[graph][f"{STATUS[backend]}_rebuilt_because"], startup
    _, _, identity = _run(backend, exports["a"], samples)
    assert {v[STATUS[backend]] for v in identity["runner"]["startup"].values()} == {"hit"}
    assert not _warnings(capsys)


@pytest.mark.parametrize("backend", ["ort", "ov"])
@pytest.mark.parametrize("graph", ["lga_image", "text_encoder"])
def test_another_models_entry_under_this_key_is_rebuilt(backend, graph, exports, samples, uncached, other_cache,
                                                        cache, capsys):
    _run(backend, exports["a"], samples)
    tampered = _entries(cache / KIND[backend], graph)
    for entry in tampered:
        _plant(entry, _entries(other_cache / KIND[backend], graph)[0])
    _assert_rebuilt(backend, exports, samples, uncached, capsys, tampered, "built for another key")


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_bit_rot_in_a_cached_file_is_rebuilt(backend, exports, samples, uncached, cache, capsys):
    _run(backend, exports["a"], samples)
    tampered = _entries(cache / KIND[backend], "lga_image")
    for entry in tampered:
        payload = _payload(entry)
        payload.chmod(0o600)  # OpenVINO writes its blobs read-only
        with open(payload, "r+b") as handle:
            handle.seek(payload.stat().st_size // 2)
            block = handle.read(4096)
            handle.seek(payload.stat().st_size // 2)
            handle.write(bytes(b ^ 0xFF for b in block))
    _assert_rebuilt(backend, exports, samples, uncached, capsys, tampered, "does not match the sha256")


def test_negated_decoder_initialisers_in_a_valid_cached_graph_are_rebuilt(exports, samples, uncached, cache, capsys):
    import onnx
    from onnx import numpy_helper

    _run("ort", exports["a"], samples)
    tampered = _entries(cache / "onnxruntime", "lga_image")
    for entry in tampered:
        model = onnx.load(str(_payload(entry)))
        for tensor in model.graph.initializer:
            if "mask_decoder" in tensor.name:
                tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
        onnx.checker.check_model(model)
        onnx.save(model, str(_payload(entry)))
    _assert_rebuilt("ort", exports, samples, uncached, capsys, tampered, "does not match the sha256")


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_an_entry_that_is_a_symlink_to_another_entry_is_rebuilt(backend, exports, samples, uncached, other_cache,
                                                                 cache, tmp_path, capsys):
    _run(backend, exports["a"], samples)
    tampered = _entries(cache / KIND[backend], "lga_image")
    for number, entry in enumerate(tampered):
        other = tmp_path / f"other-{number}"  # another model's entry, its payload under this entry's name
        other.symlink_to(_entries(other_cache / KIND[backend], "lga_image")[0].resolve())
        planted = tmp_path / f"planted-{number}{entry.suffix if entry.is_file() else ''}"
        shutil.copytree(other, planted, symlinks=False) if other.is_dir() else shutil.copy2(other, planted)
        if planted.is_dir():
            os.replace(_payload(planted), planted / _payload(entry).name)
        _remove(entry)
        entry.symlink_to(planted)
    _assert_rebuilt(backend, exports, samples, uncached, capsys, tampered, "symbolic link")


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_a_world_writable_cache_root_is_refused_in_one_line(backend, exports, cache):
    from lga_export.runtime.registry import open_runner

    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(LGAError) as raised:
        open_runner(backend, exports["a"])
    message = str(raised.value)
    assert "\n" not in message and str(cache) in message and "chmod 700" in message, message
    cache.chmod(0o700)
    (cache / KIND[backend]).mkdir(mode=0o700)
    (cache / KIND[backend]).chmod(0o770)  # group-writable kind folder under a private root
    with pytest.raises(LGAError, match="can be written by others"):
        open_runner(backend, exports["a"])


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_a_new_cache_root_is_private(backend, exports, samples, tmp_path, monkeypatch):
    root = tmp_path / "new" / "cache"
    monkeypatch.setenv("LGA_EXPORT_CACHE", str(root))
    _run(backend, exports["a"], samples)
    for folder in (tmp_path / "new", root, root / KIND[backend], *(root / KIND[backend]).iterdir()):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


@pytest.mark.parametrize("backend", ["ort", "ov"])
@pytest.mark.parametrize("cap", ["nan", "inf", "-1", "lots"])
def test_invalid_cache_caps_are_a_one_line_error(backend, cap, exports, cache, monkeypatch):
    from lga_export.runtime.registry import open_runner

    monkeypatch.setenv("LGA_EXPORT_CACHE_MAX_GB", cap)
    with pytest.raises(LGAError) as raised:
        open_runner(backend, exports["a"])
    message = str(raised.value)
    assert "\n" not in message and f"LGA_EXPORT_CACHE_MAX_GB={cap!r}" in message, message

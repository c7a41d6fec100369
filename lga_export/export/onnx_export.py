"""Export the two LGA graphs to ONNX with the dynamo exporter, and derive FP16 graphs.

The dynamo exporter keeps the batch dimension symbolic through SAM's window partition and
relative-position code (the legacy TorchScript exporter bakes it into constants). FP16
graphs come from onnxconverter-common with the ops the model family keeps in FP32
(`FamilySpec.fp16_fp32_ops`: LayerNorm, softmax, the pooling reductions, ...), the text pooling
and the final logits kept in FP32, and FP32 inputs/outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lga_export.contract import AXIS_BOUNDS, GraphSpec
from lga_export.family_specs import spec_of

DEFAULT_OPSET = 18
MAX_OPSET = 23  # the newest opset the dynamo exporter of the pinned torch writes (checked by a test)


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write, before minutes of tracing."""
    from lga_export.errors import LGAError

    if not DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise LGAError(f"--opset {opset} is not supported: the dynamo exporter writes opsets {DEFAULT_OPSET}..{MAX_OPSET}")


def _dynamic_shapes(spec: GraphSpec) -> dict[str, dict[int, torch.export.Dim]]:
    dims = {symbol: torch.export.Dim(symbol, min=low, max=high) for symbol, (low, high) in AXIS_BOUNDS.items()}
    return {t.name: {axis: dims[symbol] for axis, symbol in t.dynamic_axes.items()} for t in spec.inputs}


def export_graph(module: torch.nn.Module, spec: GraphSpec, sample: tuple[torch.Tensor, ...],
                 path: Path, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Trace `module` at the sample's shapes and write `path` (+ external weights if large).

    Returns the files written.
    """
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, sample, dynamo=True, opset_version=opset, input_names=spec.input_names,
            output_names=spec.output_names, dynamic_shapes=_dynamic_shapes(spec), verbose=False,
            report=False, optimize=True,
        )
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_500_000_000
    program.save(str(path), external_data=large)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def output_chain(model, output_name: str) -> list[str]:
    """Names of the nodes from the last MatMul to the graph output (the final logits)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    chain, name = [], output_name
    while name in producers:
        node = producers[name]
        chain.append(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            break
        data_inputs = [i for i in node.input if i in producers]
        if not data_inputs:
            break
        name = data_inputs[0]
    return chain


def pooling_nodes(model) -> list[str]:
    """Nodes of the text pooling (TextEncoder's own ops, outside backbone and projection).

    Found through the module scopes the dynamo exporter records on every node.
    """
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        parts = [s.strip(" '") for s in scopes.strip("[]").split(",")]
        if len(parts) == 3 and parts[1] == "model.text_encoder":
            names.append(node.name)
    return names


def convert_to_fp16(source: Path, target: Path, spec: GraphSpec, family: str) -> list[Path]:
    """FP16 weights and matrix products; FP32 for the ops `family` keeps (its `fp16_fp32_ops`),
    the text pooling, the final logits and the I/O."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    keep = output_chain(model, spec.output_names[0]) + pooling_nodes(model)
    fp32_ops = list(spec_of(family).fp16_fp32_ops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=fp32_ops,
                                                node_block_list=keep, disable_shape_infer=True)
    del half.graph.value_info[:]  # stale FP32 annotations; the checker re-infers them
    _outputs_to_fp32(half)
    large = source.with_name(source.name + ".data").exists()
    onnx.save(half, str(target), save_as_external_data=large, all_tensors_to_one_file=True,
              location=target.name + ".data" if large else None)
    data = target.with_name(target.name + ".data")
    return [target, data] if data.exists() else [target]


def _outputs_to_fp32(model) -> None:
    """Cast any FP16 graph output back to FP32 (a blocked last node can leave one in FP16)."""
    from onnx import TensorProto, helper

    for output in model.graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = output.name + "_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                                 name=output.name + "_to_fp32"))
        output.type.tensor_type.elem_type = TensorProto.FLOAT


def check_graph(path: Path, spec: GraphSpec) -> None:
    """ONNX checker (full check), standard operators only, and the spec's names and dynamic axes."""
    import onnx

    from lga_export.errors import ValidationFailed

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValidationFailed(f"{path.name}: ONNX checker failed: {str(exc).splitlines()[0]}") from exc
    model = onnx.load(str(path), load_external_data=False)
    custom = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise ValidationFailed(f"{path.name}: uses non-standard operator domains {custom}; "
                               f"TensorRT would not parse it")
    declared = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for tensor in spec.inputs + spec.outputs:
        if tensor.name not in declared:
            raise ValidationFailed(f"{path.name}: has no {tensor.name!r} (has {sorted(declared)})")
        dims = declared[tensor.name].type.tensor_type.shape.dim
        for axis in tensor.dynamic_axes:
            if axis >= len(dims) or not dims[axis].dim_param:
                raise ValidationFailed(f"{path.name}: axis {axis} of {tensor.name} was baked into a constant; "
                                       f"it must stay dynamic")

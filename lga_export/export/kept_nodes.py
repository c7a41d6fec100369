"""Which nodes of an FP32 ONNX graph an INT8 graph keeps in FP32 (ONNX Runtime's static QDQ and
NNCF's OpenVINO INT8 alike): the nodes under module-path scopes the model family declares
(`FamilySpec.int8_fp32_scopes` / `ov_int8_fp32_scopes`), found through the PyTorch module scope
the dynamo exporter records on every node, and attention's activation x activation MatMuls."""

from __future__ import annotations

import ast
import re
from typing import Iterable

STATIC_OPS = ("MatMul", "Gemm", "Conv")
WEIGHTED_OPS = (*STATIC_OPS, "ConvTranspose")  # what NNCF quantises (SAM's decoder upscales with ConvTranspose)
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def node_scopes(model) -> dict[str, str]:
    """Node name -> its PyTorch module path ('model.ffms.0.image_update.attn.v_proj/linear_6'),
    from the name scopes the dynamo exporter records ('' when a node has none)."""
    scopes = {}
    for node in model.graph.node:
        value = next((p.value for p in node.metadata_props if p.key == _SCOPE_KEY), None)
        try:
            parts = ast.literal_eval(value) if value else []
        except (ValueError, SyntaxError):
            parts = []
        path = [p for p in parts if p]
        scopes[node.name] = (max((p for p in path[:-1]), key=len, default="") + "/" + path[-1]) if path else ""
    return scopes


def activation_matmuls(model) -> list[str]:
    """MatMuls whose second input is computed, not a weight: attention's q @ k^T and
    softmax @ v. ONNX Runtime's QDQ quantiser ignores its MatMulConstBOnly option, so they are
    excluded by name (quantising the softmax output of SAM's global attention to 8 bits wrecks
    the masks: 1024-4096 keys, most probabilities below 1/255)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    produced = {}
    for node in model.graph.node:
        for output in node.output:
            produced[output] = node

    def constant(name: str, depth: int = 0) -> bool:  # a weight, possibly behind Transpose/Reshape/Cast
        if name in constants:
            return True
        node = produced.get(name)
        return (node is not None and depth < 4 and node.op_type in ("Transpose", "Reshape", "Cast", "Identity")
                and bool(node.input) and constant(node.input[0], depth + 1))

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constant(n.input[1])]


def nodes_matching(model, patterns: Iterable[str], op_types: Iterable[str] = STATIC_OPS) -> list[str]:
    """Names of the nodes of `op_types` whose module path matches any pattern (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    ops = set(op_types)
    scopes = node_scopes(model)
    return [node.name for node in model.graph.node
            if node.op_type in ops and any(c.search(scopes.get(node.name, "")) for c in compiled)]


def kept_fp32_nodes(model, scopes: Iterable[str], attention_products: bool,
                    op_types: Iterable[str] = STATIC_OPS) -> list[str]:
    """Node names an INT8 graph keeps in FP32: the `op_types` nodes under `scopes`, and with
    `attention_products` the activation x activation MatMuls (ONNX Runtime and OpenVINO alike)."""
    return list(dict.fromkeys([*(activation_matmuls(model) if attention_products else []),
                               *nodes_matching(model, scopes, op_types)]))


def graph_structure(source):
    """The ONNX file `source` without its external weights: node names, ops and scopes only."""
    import onnx

    return onnx.load(str(source), load_external_data=False)


def described_nodes(names: Iterable[str], scopes: dict[str, str]) -> list[str]:
    """Node names as a manifest lists them, each with its module path ('node_MatMul_9
    (model.image_encoder.layers.1.blocks.0.mlp.fc1/linear)'): a reader can tell what was kept FP32."""
    return [f"{name} ({scopes.get(name, '')})" for name in names]


def kept_fp32_nodes_in(source, scopes: Iterable[str], attention_products: bool,
                       op_types: Iterable[str] = STATIC_OPS) -> list[str]:
    """`kept_fp32_nodes` of the ONNX file `source` (not read when there is nothing to keep)."""
    scopes = list(scopes)
    if not scopes and not attention_products:
        return []
    return kept_fp32_nodes(graph_structure(source), scopes, attention_products, op_types)

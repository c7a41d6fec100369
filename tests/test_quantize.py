"""INT8 image graphs: calibrated static QDQ quantisation and the method choice."""

from __future__ import annotations

import numpy as np
import pytest

from lga_export.errors import LGAError
from lga_export.contract import IMAGE_GRAPH, tolerance


@pytest.fixture(scope="module")
def static_export(int8_export):
    """The default model exported with a statically quantised image graph, validated (batch 2)."""
    return int8_export("static")


def test_static_int8_export_passes_validation_and_records_its_calibration(static_export, data_root):
    out, manifest = static_export
    int8 = manifest["int8"]
    assert int8["method"] == "static" and int8["format"] == "QDQ" and int8["per_channel"] is True
    assert int8["calibration"]["count"] == 32 and len(int8["calibration"]["images"]) == 32
    from lga_export.samples import default_data_root

    expected = "qata-cov19 Train" if (data_root or default_data_root()) else "built-in synthetic"
    assert int8["calibration"]["source"].startswith(expected)
    excluded = " ".join(int8["excluded_nodes"])
    assert "attn/matmul" in excluded and "mask_decoder" in excluded and "patch_embed" in excluded
    result = manifest["validation"]["results"]["int8"]
    assert result["passed"] and result["end_to_end"]["dice_worst"] >= tolerance("int8").min_dice
    assert manifest["graphs"][IMAGE_GRAPH]["int8"]["file"] == "lga_image.int8.onnx"


def test_static_int8_graph_is_qdq_and_runs_through_the_factory(static_export, data_root):
    import onnx

    from lga_export.runtime.sample_runs import run_samples
    from lga_export.runtime.registry import open_runner
    from lga_export.samples import validation_samples

    out, _ = static_export
    model = onnx.load(str(out / "lga_image.int8.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    per_channel = [i for i in model.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert per_channel, "weights are quantised per channel"
    samples, _ = validation_samples(2, data_root)
    with open_runner("ort", out, "int8", cache_dir=False) as runner:
        logits = run_samples(runner, samples, 2).logits
    assert np.isfinite(logits).all()


def test_int8_method_choice_is_checked_before_any_work():
    from lga_export.export.quantize import DEFAULT_INT8_METHOD, int8_method

    assert int8_method(True) == DEFAULT_INT8_METHOD == "dynamic"
    assert int8_method("Static") == "static" and int8_method(None) is None and int8_method(False) is None
    with pytest.raises(LGAError, match="--int8 takes"):
        int8_method("fp8")
    with pytest.raises(LGAError, match="--calibration-samples"):
        int8_method("static", 0)


def test_calibration_uses_training_images_or_built_in_samples_other_than_validations(tmp_path, data_root):
    from lga_export.export.calibration import calibration_samples
    from lga_export.samples import validation_samples

    pairs, source = calibration_samples(3, tmp_path)  # a root without qata-cov19/: built-in samples
    assert source.startswith("built-in synthetic") and len(pairs) == 3
    validation = validation_samples(3)[0] if data_root is None else []
    for (_, rgb, text), other in zip(pairs, validation):
        assert not np.array_equal(rgb, other.rgb)
    if data_root is not None:
        pairs, source = calibration_samples(4, data_root)
        assert source.startswith("qata-cov19 Train") and len(pairs) == 4
        assert all(text.strip() for _, _, text in pairs)


def test_sensitive_nodes_are_found_by_module_path(static_export):
    import onnx

    from lga_export.export.kept_nodes import activation_matmuls, node_scopes, nodes_matching
    from lga_export.family_specs import spec_of

    out, manifest = static_export
    model = onnx.load(str(out / "lga_image.onnx"), load_external_data=False)
    scopes = node_scopes(model)
    attention = activation_matmuls(model)
    assert attention and all("attn" in scopes[n] or scopes[n].startswith("/matmul") for n in attention)
    family_scopes = spec_of(manifest["config"].get("family", "sam_vit")).int8_fp32_scopes
    assert manifest["int8"]["excluded_scopes"] == family_scopes  # the family's scopes, with why
    decoder = nodes_matching(model, family_scopes)
    assert decoder and all(scopes[n].startswith(("model.mask_decoder", "model.image_encoder.patch_embed",
                                                  "model.image_encoder.neck")) for n in decoder)


@pytest.mark.parametrize("preset, lite", [("tiny", False), ("lite", True)])
def test_dynamic_int8_scales_weights_and_keeps_scopes_as_the_family_declares(tmp_path, preset, lite):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lga_export.config import get_preset
    from lga_export.export.quantize import quantize_int8

    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal((64, 64)).astype(np.float32) for name in ("w_stage1", "w_stage3")}
    for weight in weights.values():
        weight[:, 0] *= 100  # one loud output channel: a per-tensor scale would flatten the others
    nodes = []
    for name, inputs, scope in (("stage1", ["x", "w_stage1"], "model.image_encoder.layers.1.blocks.0.mlp.fc1"),
                                ("stage3", ["h", "w_stage3"], "model.image_encoder.layers.3.blocks.0.mlp.fc1")):
        node = helper.make_node("MatMul", inputs, ["h" if name == "stage1" else "y"], name=name)
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr([scope, "linear"]))
        nodes.append(node)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(w, n) for n, w in weights.items()])
    source, target = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    entry = quantize_int8("dynamic", source, target, config=get_preset(preset), log=lambda _: None)
    assert entry["per_channel"] is lite
    kept = ["stage1 (model.image_encoder.layers.1.blocks.0.mlp.fc1/linear)"]  # with the module it computes
    assert entry["excluded_nodes"] == (kept if lite else []) and bool(entry["excluded_scopes"]) is lite
    scales = {i.name: numpy_helper.to_array(i).size for i in onnx.load(str(target)).graph.initializer
              if i.name.endswith("_scale")}
    assert scales == ({"w_stage3_scale": 64} if lite else {"w_stage1_scale": 1, "w_stage3_scale": 1})

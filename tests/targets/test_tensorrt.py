"""TensorRT targets: strongly typed network construction and engine builds wherever TensorRT (or
TensorRT-RTX, which builds engines without a GPU) is importable; running needs a GPU TensorRT runs on."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vidcc import onnx_io, plugins
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.target import BuildContext

from vidcc.targets.tensorrt import import_trt, profile_shapes  # noqa: E402

trt, flavour = import_trt()
needs_trt = pytest.mark.skipif(trt is None, reason=f"TensorRT is not importable here ({flavour})")


def test_profile_shapes_range_symbolic_dims_only():
    feeds = {"x": np.zeros((1, 4, 8, 16), np.float32)}
    shapes = profile_shapes([("x", [1, "frames", 8, "width"])], feeds, {"width": (1.0, 4.0)})
    assert shapes["x"] == ((1, 2, 8, 16), (1, 4, 8, 16), (1, 8, 8, 64))


def test_unavailable_targets_say_why_and_how():
    for name in ("trt-fp32", "trt-fp16", "trt-bf16"):
        why = plugins.registry().targets[name].obj.available()
        if not why:
            assert why.reason and "tensorrt" in why.hint.lower()


@needs_trt
@pytest.mark.parametrize("target", ["trt-fp32", "trt-fp16"])
def test_engine_builds_from_the_target_pipeline(target, mlp_path, tmp_path):
    t = plugins.registry().targets[target].obj
    graph = onnx_io.load(mlp_path)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    run_pipeline(graph, t.default_pipeline, PassContext(target=t, calibration=[feeds]))
    model = onnx_io.save(graph, tmp_path / "model.onnx")
    if target == "trt-fp16":  # explicit casts from the precision passes, not builder flags
        assert any(n.op_type == "Cast" for n in onnx.load(model).graph.node)
    entries = t.build(model, tmp_path, BuildContext(feeds=feeds, work_dir=tmp_path))
    assert entries["strongly_typed"] and entries["layers"] >= 3
    assert (tmp_path / entries["engine"]).stat().st_size == entries["engine_bytes"] > 1000
    assert entries["profile"]["x"] == [[1, 4], [3, 4], [6, 4]]


@needs_trt
def test_parser_refusal_is_one_clear_error(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    from vidcc.errors import TargetError

    m = helper.make_model(helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", T.FLOAT, [4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [None])]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, tmp_path / "m.onnx")
    t = plugins.registry().targets["trt-fp32"].obj
    with pytest.raises(TargetError, match="trt-fp32: TensorRT's ONNX parser refused the graph"):
        t.build(tmp_path / "m.onnx", tmp_path, BuildContext(feeds={"x": np.zeros(4, np.float32)}))


@needs_trt
def test_token_routed_moe_engine_builds(tmp_path):
    """moe-dit's sparse expert dispatch (NonZero, which TensorRT's parser refuses) is made dense by the
    trt pipelines: the tiny model's engine parses and builds (TensorRT-RTX builds on a CPU-only machine)."""
    zoo = pytest.importorskip("vidcc.zoo")
    pytest.importorskip("torch")
    exp = zoo.export("moe-dit:tiny")
    with np.load(exp.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    t = plugins.registry().targets["trt-fp16"].obj
    graph = onnx_io.load(exp.model_path)
    run_pipeline(graph, t.default_pipeline, PassContext(target=t, calibration=[feeds]))
    model = onnx_io.save(graph, tmp_path / "model.onnx")
    entries = t.build(model, tmp_path, BuildContext(feeds=feeds, work_dir=tmp_path))
    assert entries["layers"] > 100 and (tmp_path / entries["engine"]).stat().st_size == entries["engine_bytes"]

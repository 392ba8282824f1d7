"""dense-moe-dispatch: token-routed sparse MoE dispatch (NonZero -> gather -> expert -> scatter) becomes
dense gated compute with no data-dependent shape, equal to the original on ONNX Runtime CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import run_ort
from tests.passes import moe_graphs as mg
from vidcc import onnx_io
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline


def _run(model: onnx.ModelProto, spec: str = "dense-moe-dispatch"):
    graph = onnx_io.from_proto(model)
    ctx = run_pipeline(graph, spec)
    verify(graph)
    return graph, ctx.log[-1]


@pytest.mark.parametrize("router", ["token", "timestep"])
def test_hand_built_dispatch_becomes_dense_and_equal(router):
    model = mg.moe_sparse_dispatch(router=router)
    graph, rec = _run(model)
    hist = graph.op_histogram()
    assert not {"NonZero", "ScatterElements", "GatherND"} & set(hist)
    assert rec.stats == {"dispatches": "4/4", "moe_layers": 1, "expert_flops_factor": "2x"}  # 4 experts, top-2
    assert hist["Where"] == hist["ReduceSum"] == 4  # one gate per expert
    for t in (999, 500, 10):
        want = run_ort(model, mg.feeds(t))["out"]
        got = run_ort(onnx_io.to_proto(graph), mg.feeds(t))["out"]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_no_dispatch_is_a_no_op():
    model = mg.moe_token_router()  # top-k with GatherElements of a stack: no NonZero
    graph = onnx_io.from_proto(model)
    before = onnx_io.to_proto(graph).SerializeToString()
    rec = run_pipeline(graph, "dense-moe-dispatch").log[-1]
    assert not rec.modified and rec.stats == {} and onnx_io.to_proto(graph).SerializeToString() == before


def test_expert_output_not_scaled_by_the_gate_is_refused():
    model = mg.moe_sparse_dispatch(router="token")
    for node in model.graph.node:
        if node.op_type == "Mul" and node.name.startswith("upd_"):
            node.input[1] = node.input[0]  # y * y: unselected tokens would be added
    graph, rec = _run(model)
    assert not rec.modified and rec.stats["dispatches"] == "0/4"
    assert all("not scaled by the gate" in d["reason"] for d in rec.details)
    assert len(graph.nodes_by_op("NonZero")) == 4


def test_max_ratio_refuses_layers_that_would_cost_more():
    model = mg.moe_sparse_dispatch(router="token")
    graph, rec = _run(model, "dense-moe-dispatch{max_ratio=1.5}")
    assert not rec.modified and "2x the sparse expert FLOPs (max_ratio=1.5)" in rec.details[0]["reason"]
    _, rec = _run(model, "dense-moe-dispatch{max_ratio=2}")
    assert rec.modified


# ---- the zoo's moe-dit, both exporters ---------------------------------------------------------------
def _zoo(name: str, exporter: str):
    zoo = pytest.importorskip("vidcc.zoo")
    pytest.importorskip("torch")
    e = zoo.export(name, exporter=exporter)
    with np.load(e.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    return e.model_path, feeds


def _random_feeds(feeds: dict, seed: int, frames_hw=None) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in feeds.items():
        shape = v.shape if k != "hidden_states" or frames_hw is None else (*v.shape[:2], *frames_hw)
        out[k] = rng.integers(0, 1000, shape).astype(v.dtype) if k == "timestep" else \
            rng.standard_normal(shape).astype(v.dtype)
    return out


@pytest.mark.parametrize("name", ["moe-dit:tiny", "moe-dit-trouter:tiny"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_zoo_moe_dit_dense_equals_original(name, exporter):
    import onnxruntime as ort

    path, feeds = _zoo(name, exporter)
    graph = onnx_io.load(path)
    ctx = run_pipeline(graph, "dense-moe-dispatch", PassContext(calibration=[feeds]))
    rec = ctx.log[-1]
    assert rec.stats["dispatches"] == "8/8" and rec.stats["moe_layers"] == 2  # 2 layers x 4 experts
    assert not {"NonZero", "ScatterND", "ScatterElements"} & set(graph.op_histogram())
    verify(graph)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(onnx_io.to_proto(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    for seed, hw in ((0, None), (1, None), (2, (3, 4, 6))):  # random inputs; then another frames/height/width
        f = _random_feeds(feeds, seed, hw)
        want, have = ref.run(None, f)[0], got.run(None, f)[0]
        assert np.abs(have - want).max() <= 1e-5 * np.abs(want).max(), (seed, hw)


def test_zoo_trt_pipeline_leaves_no_nonzero():
    """The trt targets' default pipeline makes moe-dit dense (TensorRT's parser has no NonZero), and the
    fp32 pipeline's graph still equals the original."""
    from tests.passes.test_moe import assert_same_zoo
    from vidcc import plugins

    path, feeds = _zoo("moe-dit:tiny", "legacy")
    for target in ("trt-fp32", "trt-fp16"):
        t = plugins.registry().targets[target].obj
        assert t.default_pipeline.startswith("dense-moe-dispatch,")
        graph = onnx_io.load(path)
        run_pipeline(graph, t.default_pipeline, PassContext(target=t, calibration=[feeds]))
        assert "NonZero" not in graph.op_histogram()
        if target == "trt-fp32":
            assert_same_zoo(path, graph, feeds, [999, 10])


def test_zoo_after_precompute_routers_only_the_picked_experts_go_dense():
    """Under a timestep binding precompute-routers leaves top_k experts per layer with a constant
    `chosen`: the dense form of those costs nothing extra and still equals the original."""
    from tests.passes.test_moe import assert_same_zoo
    from vidcc.passes import moe

    path, feeds = _zoo("moe-dit-trouter:tiny", "dynamo")
    graph = moe.specializations(onnx_io.load(path), {"timestep": [999]}, {k: v.shape for k, v in feeds.items()})[0].graph
    assert len(graph.nodes_by_op("NonZero")) == 2 * 2  # 2 layers x top-2
    rec = run_pipeline(graph, "dense-moe-dispatch").log[-1]
    assert rec.stats["dispatches"] == "4/4" and "NonZero" not in graph.op_histogram()
    assert_same_zoo(path, graph, feeds, [999])

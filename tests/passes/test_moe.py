"""precompute-routers: If / Where / TopK routers folded under timestep bindings, token routers left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from tests.conftest import run_ort
from tests.passes import moe_graphs as mg
from vidcc import onnx_io
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.passes import moe

TIMESTEPS = [999, 990, 950, 900, 875, 874, 700, 300, 10]  # high-noise while t >= 875


def assert_same(original: onnx.ModelProto, graph, timesteps) -> None:
    """The specialized graph's outputs equal the original's for each bound value (rel <= 1e-4)."""
    model = onnx_io.to_proto(graph)
    for t in timesteps:
        want = run_ort(original, mg.feeds(t))["out"]
        got = run_ort(model, mg.feeds(t))["out"]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), f"t={t}"


def expert_weights(graph) -> set[str]:
    return {c for c in graph.constants if c.startswith(("W1_", "W2_"))}


@pytest.mark.parametrize("build", [mg.wan22_if, lambda: mg.wan22_if(branch_initializers=True), mg.wan22_where],
                         ids=["if", "if-branch-weights", "where"])
def test_wan22_switch_two_specializations(build):
    model = build()
    graph = onnx_io.from_proto(model)
    specs = moe.specializations(graph, {"timestep": TIMESTEPS})
    assert [s.route.positions for s in specs] == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    for s, kept in zip(specs, ({"W1_0", "W2_0"}, {"W1_1", "W2_1"})):
        verify(s.graph)
        hist = s.graph.op_histogram()
        assert not hist["If"] and not hist["Where"] and not hist["GreaterOrEqual"], "router left behind"
        assert expert_weights(s.graph) == kept
        assert moe.weight_bytes(s.graph) < 0.55 * moe.weight_bytes(graph)
        assert "timestep" in s.graph.inputs  # still read by the time embedding
        assert_same(model, s.graph, [TIMESTEPS[i] for i in s.route.positions])
    assert len(graph.nodes_by_op("If") + graph.nodes_by_op("Where")) == 1, "the input graph is not changed"


def test_pass_specializes_in_place_for_one_route():
    model = mg.wan22_if()
    graph = onnx_io.from_proto(model)
    ctx = PassContext(bindings={"timestep": [999, 980]}, verify_each=True)
    run_pipeline(graph, "precompute-routers", ctx)
    rec = ctx.log[0]
    assert rec.modified and not graph.nodes_by_op("If")
    routed = [d for d in rec.details if d["kind"] == "routed"]
    assert [(d["router"], d["value"], d["decision"]) for d in routed] == [
        ("expert_switch", 999, "then branch"), ("expert_switch", 980, "then branch")]
    assert rec.stats["weight_bytes_after"] < 0.55 * rec.stats["weight_bytes_before"]
    assert_same(model, graph, [999, 980])


def test_pass_leaves_graph_when_values_take_two_routes():
    graph = onnx_io.from_proto(mg.wan22_where())
    ctx = PassContext(bindings={"timestep": TIMESTEPS})
    run_pipeline(graph, "precompute-routers", ctx)
    assert not ctx.log[0].modified and graph.nodes_by_op("Where")
    assert any("take 2 routes" in d.get("reason", "") for d in ctx.log[0].details)


def test_pass_without_bindings_reports_routers():
    graph = onnx_io.from_proto(mg.wan22_if())
    ctx = run_pipeline(graph, "precompute-routers")
    assert not ctx.log[0].modified
    assert {d["node"]: d["reason"] for d in ctx.log[0].details} == {"expert_switch": "router depends on timestep"}


def test_timestep_topk_router_is_folded():
    model = mg.moe_timestep_router()
    graph = onnx_io.from_proto(model)
    specs = moe.specializations(graph, {"timestep": TIMESTEPS})
    assert len(specs) > 1
    for s in specs:
        verify(s.graph)
        assert not s.graph.nodes_by_op("TopK")
        picked = s.route.decisions["router_topk"]
        experts = {int(c[3:]) for c in expert_weights(s.graph)}
        assert picked == f"experts {sorted(experts)}" and len(experts) == 1
        assert s.graph.nodes_by_op("Softmax"), "gate values stay computed from the timestep"
        assert_same(model, s.graph, [TIMESTEPS[i] for i in s.route.positions])


def test_timestep_topk_router_k2_keeps_two_experts():
    model = mg.moe_timestep_router(k=2)
    graph = onnx_io.from_proto(model)
    for s in moe.specializations(graph, {"timestep": TIMESTEPS}):
        assert len({c[3:] for c in expert_weights(s.graph)}) == 2
        assert_same(model, s.graph, [TIMESTEPS[i] for i in s.route.positions])


def test_token_router_left_unchanged_with_reason():
    model = mg.moe_token_router()
    graph = onnx_io.from_proto(model)
    before = onnx_io.to_proto(graph).SerializeToString()
    ctx = PassContext(bindings={"timestep": [999]}, verify_each=True)
    run_pipeline(graph, "precompute-routers", ctx)
    rec = ctx.log[0]
    assert not rec.modified
    assert {"kind": "refused", "node": "router_topk", "op": "TopK", "reason": "router depends on hidden_states"} in rec.details
    assert onnx_io.to_proto(graph).SerializeToString() == before
    assert_same(model, graph, [999, 10])


def nested_if_model():
    """If(t >= 875) whose then-branch holds If(t >= 950): three routes."""
    rng = np.random.default_rng(3)
    base = mg.wan22_if(seed=3)
    g = base.graph
    switch = next(n for n in g.node if n.op_type == "If")
    then = next(a for a in switch.attribute if a.name == "then_branch").g
    inner_then, inner_else = [], []
    for i, dst in ((0, inner_then), (2, inner_else)):
        nodes, inits = mg._expert(rng, i, "x", f"z_{i}", prefix="n")
        dst.append(helper.make_graph(nodes, f"inner_{i}", [], [helper.make_tensor_value_info(f"z_{i}", T.FLOAT, None)], inits))
    b2 = onnx.numpy_helper.from_array(np.array(950, np.float32), "b950")
    new_then = helper.make_graph(
        [helper.make_node("GreaterOrEqual", ["t_f", "b950"], ["very_high_v"], name="inner_cmp"),
         helper.make_node("Squeeze", ["very_high_v"], ["very_high"], name="inner_squeeze"),
         helper.make_node("If", ["very_high"], ["y_0"], name="inner_switch",
                          then_branch=inner_then[0], else_branch=inner_else[0])],
        "expert_0", [], list(then.output), [b2])
    then.CopyFrom(new_then)
    return base


def test_nested_routers_split_further():
    model = nested_if_model()
    onnx.checker.check_model(model, full_check=True)
    graph = onnx_io.from_proto(model)
    specs = moe.specializations(graph, {"timestep": TIMESTEPS})
    assert [s.route.positions for s in specs] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert specs[0].route.decisions == {"expert_switch": "then branch", "inner_switch": "then branch"}
    for s in specs:
        assert not s.graph.nodes_by_op("If")
        assert_same(model, s.graph, [TIMESTEPS[i] for i in s.route.positions])


def test_specialize_single_binding_and_mismatched_lists():
    graph = onnx_io.from_proto(mg.wan22_where())
    low = moe.specialize(graph, {"timestep": 100})
    assert expert_weights(low) == {"W1_1", "W2_1"}
    with pytest.raises(Exception, match="values"):
        moe.specializations(graph, {"timestep": [1, 2, 3], "hidden_states": [0.0, 1.0]})


@pytest.mark.parametrize("router", ["timestep", "token"])
def test_sparse_dispatch_drops_experts_never_named(router):
    model = mg.moe_sparse_dispatch(router=router)
    graph = onnx_io.from_proto(model)
    specs = moe.specializations(graph, {"timestep": TIMESTEPS})
    if router == "token":
        assert len(specs) == 1 and expert_weights(specs[0].graph) == expert_weights(graph)
        assert any(e.get("reason") == "router depends on hidden_states" for e in specs[0].events)
    for s in specs:
        verify(s.graph)
        assert_same(model, s.graph, [TIMESTEPS[i] for i in s.route.positions])
        if router == "timestep":
            named = {int(x) for x in s.route.decisions["router_topk"][len("experts ["):-1].split(",")}
            assert {int(c[3:]) for c in expert_weights(s.graph)} == named and len(named) == 2


# ---- the zoo's real exports ------------------------------------------------------------------------
def zoo_model(name: str, exporter: str | None = None):
    zoo = pytest.importorskip("vidcc.zoo")
    pytest.importorskip("torch")
    try:
        e = zoo.export(name, exporter=exporter)
    except KeyError:
        pytest.skip(f"{name} is not in the zoo yet")
    with np.load(e.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    return e.model_path, feeds


def assert_same_zoo(path, graph, feeds, timesteps) -> None:
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(onnx_io.to_proto(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    for t in timesteps:
        f = dict(feeds, timestep=np.full_like(feeds["timestep"], t))
        want, have = ref.run(None, f)[0], got.run(None, f)[0]
        assert np.abs(have - want).max() <= 1e-4 * np.abs(want).max(), f"t={t}"


def test_zoo_wan22_moe_two_experts():
    path, feeds = zoo_model("wan22-moe:tiny")
    graph = onnx_io.load(path)
    shapes = {k: v.shape for k, v in feeds.items()}
    specs = moe.specializations(graph, {"timestep": TIMESTEPS}, shapes)
    assert [s.route.positions for s in specs] == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    for s in specs:
        assert not s.graph.nodes_by_op("If")
        assert moe.weight_bytes(s.graph) <= 0.52 * moe.weight_bytes(graph)
        assert_same_zoo(path, s.graph, feeds, [TIMESTEPS[i] for i in s.route.positions])


@pytest.mark.parametrize("exporter", [None, "dynamo"])
def test_zoo_moe_dit_timestep_router_folded(exporter):
    path, feeds = zoo_model("moe-dit-trouter:tiny", exporter)
    graph = onnx_io.load(path)
    specs = moe.specializations(graph, {"timestep": [999, 500, 10]}, {k: v.shape for k, v in feeds.items()})
    for s in specs:
        assert not s.graph.nodes_by_op("TopK")
        experts = {c for c in s.graph.constants if ".experts." in c and c.endswith("fc1.weight")}
        assert len(experts) == 2 * 2, "2 layers x top-2 of 4 experts"
        assert moe.weight_bytes(s.graph) < moe.weight_bytes(graph)
        assert_same_zoo(path, s.graph, feeds, [[999, 500, 10][i] for i in s.route.positions])


def test_zoo_moe_dit_token_router_unchanged():
    path, feeds = zoo_model("moe-dit:tiny")
    graph = onnx_io.load(path)
    before = onnx_io.to_proto(graph).SerializeToString()
    ctx = PassContext(bindings={"timestep": [999]}, calibration=[feeds])
    run_pipeline(graph, "precompute-routers", ctx)
    rec = ctx.log[0]
    assert not rec.modified and onnx_io.to_proto(graph).SerializeToString() == before
    reasons = [d["reason"] for d in rec.details if d["kind"] == "refused" and d["op"] == "TopK"]
    assert len(reasons) == 2 and all("hidden_states" in r for r in reasons)
    assert_same_zoo(path, graph, feeds, [999])

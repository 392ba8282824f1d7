"""fold-channels: zeroed channels disappear with everything coupled to them; outputs stay equal."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_ort
from tests.passes import channel_graphs as cg
from vidcc import onnx_io
from vidcc.channels import Analysis
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.passes.prune_channels import zero_classes
from vidcc.stats import summarize


def removable_classes(an: Analysis) -> list[int]:
    roots = an.uf.roots
    found = set()
    for _, _, ids in an.producers:
        found.update(roots[ids].tolist())
    return sorted(c for c in found if c not in an.blocked and c not in an.lossy_reasons)


def zero_random(graph, feeds, fraction: float, seed: int = 0) -> int:
    """Zero a random `fraction` of the removable classes, as a pruning mask would leave them."""
    an = Analysis(graph, feeds)
    classes = removable_classes(an)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(classes, max(1, int(round(fraction * len(classes)))), replace=False).tolist())
    zero_classes(graph, an, chosen)
    return len(chosen)


def rel_err(got: dict, ref: dict) -> float:
    return max(float(np.abs(got[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-6)) for k in ref)


def fold_and_check(graph, feeds, spec="fold-channels"):
    before = onnx_io.to_proto(graph)
    ref = run_ort(before, feeds)
    params = summarize(graph)["params"]
    ctx = run_pipeline(graph, spec, PassContext(calibration=[feeds], verify_each=True))
    verify(graph)
    got = run_ort(onnx_io.to_proto(graph), feeds)
    assert rel_err(got, ref) <= 1e-4
    return ctx.log[-1], params, summarize(graph)["params"]


@pytest.mark.parametrize("name", sorted(cg.GRAPHS))
def test_zeroed_classes_fold_exactly(name):
    model, feeds = cg.GRAPHS[name]()
    graph = onnx_io.from_proto(model)
    assert zero_random(graph, feeds, 0.4) > 0
    record, before, after = fold_and_check(graph, feeds)
    assert record.modified and after < before
    assert record.stats["channels_removed"] > 0
    assert any(d["kind"] == "folded" for d in record.details)


def test_nothing_to_fold_leaves_the_graph_alone():
    model, feeds = cg.resnet()
    graph = onnx_io.from_proto(model)
    record, before, after = fold_and_check(graph, feeds)
    assert not record.modified and before == after
    assert any(d["kind"] == "refused" and "graph output" in d["reason"] for d in record.details)


def mlp(op: str):
    """x -> (MatMul+Add | Gemm) -> Sigmoid -> (MatMul+Add | Gemm) -> y; hidden channel 2 has a zero
    weight column but a non-zero bias: constant sigmoid(b), folded into the second bias."""
    b = cg.Builder(3)
    w1 = b.rng.standard_normal((4, 6)).astype(np.float32)
    w1[:, 2] = 0
    if op == "Gemm":
        h = b.op("Gemm", ["x", b.const(w1), b.weight(6)], "fc1")
        b.op("Gemm", [b.op("Sigmoid", [h]), b.weight(6, 3), b.weight(3)], "fc2")
    else:
        h = b.op("Add", [b.op("MatMul", ["x", b.const(w1)], "fc1"), b.weight(6)])
        b.op("Add", [b.op("MatMul", [b.op("Sigmoid", [h]), b.weight(6, 3)], "fc2"), b.weight(3)])
    b.nodes[-1].output[0] = "y"
    model = b.model([cg.vi("x", [5, 4])], [cg.vi("y", [5, 3])])
    return model, {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)}


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_constant_channel_folds_into_the_consumer_bias(op):
    model, feeds = mlp(op)
    graph = onnx_io.from_proto(model)
    record, before, after = fold_and_check(graph, feeds)
    assert record.stats["channels_removed"] == 1 and record.stats["bias_folds"] == 1
    fc2 = next(n for n in graph.nodes if n.name.startswith("fc2"))
    assert graph.type_of(fc2.inputs[0]).shape[-1] == 5


def test_constant_channel_into_a_1x1_conv_folds_and_into_a_padded_conv_stays():
    # concat_split: the depthwise conv feeds 1x1 convs without padding -> folds
    model, feeds = cg.concat_split()
    graph = onnx_io.from_proto(model)
    dw = next(n for n in graph.nodes if n.name.startswith("depthwise"))
    w = np.array(graph.constant(dw.inputs[1]), copy=True)
    w[1] = 0  # bias stays: channel 1 of the concat is the constant bias[1] after the depthwise conv
    graph.set_constant(dw.inputs[1], w)
    record, _, _ = fold_and_check(graph, feeds)
    assert record.stats["channels_removed"] == 1 and record.stats["bias_folds"] == 1
    # transparent: conv_a's channel reaches a padded 3x3 conv -> its contribution depends on the position
    model, feeds = cg.transparent()
    graph = onnx_io.from_proto(model)
    conv = next(n for n in graph.nodes if n.name.startswith("conv_a"))
    w = np.array(graph.constant(conv.inputs[1]), copy=True)
    w[0] = 0
    graph.set_constant(conv.inputs[1], w)
    record, before, after = fold_and_check(graph, feeds)
    assert not record.modified and before == after
    assert any("padding" in d["reason"] or "cannot fold" in d["reason"] for d in record.details if d["kind"] == "refused") \
        or record.stats["channels_removed"] == 0


def test_layernorm_coupled_zero_channels_fold_only_when_not_exact():
    model, feeds = cg.attention()
    graph = onnx_io.from_proto(model)
    an = Analysis(graph, feeds)
    emb = next(ids for nid, _, ids in an.producers if graph.node(nid).name.startswith("embed"))
    zero_classes(graph, an, {int(an.uf.roots[emb[3]])})
    record, before, after = fold_and_check(graph, feeds)  # exact: the residual channel stays
    assert before == after
    ctx = run_pipeline(graph, "fold-channels{exact=false}", PassContext(calibration=[feeds], verify_each=True))
    assert ctx.log[-1].stats["classes_removed"] == 1  # one channel of embed, to_out and ff2 each
    assert ctx.log[-1].stats["channels_removed"] == 3
    run_ort(onnx_io.to_proto(graph), feeds)  # a valid graph; outputs change (LayerNorm statistics)


@pytest.mark.parametrize("name, shrink", [("svd-unet:tiny", 0.8), ("wan-dit:tiny", 0.95)])
def test_zoo_model_with_30_percent_of_groups_zeroed_folds_exactly(name, shrink):
    """The issue's exactness test: a zoo model (svd-unet: legacy export, wan-dit: dynamo export), a
    random 30% of its coupled channel classes zeroed in the weights, folds to a smaller graph with
    equal outputs. (Most of wan-dit's classes pass LayerNorm/RMSNorm statistics: not exact, not
    zeroed here.)"""
    zoo = pytest.importorskip("vidcc.zoo")
    pytest.importorskip("diffusers")
    exp = zoo.export(name)
    feeds = dict(np.load(exp.inputs_path))
    graph = onnx_io.load(exp.model_path)
    zeroed = zero_random(graph, feeds, 0.3, seed=7)
    record, before, after = fold_and_check(graph, feeds)
    assert zeroed > 20 and record.stats["classes_removed"] >= zeroed
    assert after < shrink * before


def test_random_graphs_fold_exactly_and_prune_to_valid_graphs():
    """Property over the robustness grammar's random graphs (elementwise math, shape bookkeeping,
    Transpose, MatMul, Concat/Split): zeroed classes fold with equal outputs; pruning leaves a
    graph that verifies and runs."""
    hypothesis = pytest.importorskip("hypothesis")
    from tests.robustness.graph_grammar import C, N, graphs

    feeds = {"x": np.random.default_rng(0).standard_normal((N, C)).astype(np.float32)}

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(graphs(), hypothesis.strategies.integers(0, 3))
    def prop(model, seed):
        graph = onnx_io.from_proto(model)
        an = Analysis(graph, feeds)
        if removable_classes(an):
            zero_random(graph, feeds, 0.5, seed=seed)
        fold_and_check(graph, feeds)
        graph = onnx_io.from_proto(model)
        run_pipeline(graph, "prune-channels{ratio=0.5,round_to=1,measure=false}", PassContext(calibration=[feeds], verify_each=True))
        verify(graph)
        run_ort(onnx_io.to_proto(graph), feeds)

    prop()

"""Channel dependency analysis (vidcc.channels) on hand-made graphs, one per kind of coupling."""

from __future__ import annotations

import numpy as np
import pytest

from tests.passes import channel_graphs as cg
from vidcc import onnx_io
from vidcc.channels import Analysis


def analyse(builder, **kw):
    model, feeds = builder(**kw)
    graph = onnx_io.from_proto(model)
    return graph, Analysis(graph, feeds, values=True)


def classes_of(an: Analysis, graph, node_prefix: str) -> list[set[int]]:
    """The classes of one producer's output channels, as sets of channel indices per class."""
    for nid, _, ids in an.producers:
        if graph.node(nid).name.startswith(node_prefix):
            roots = an.uf.roots[ids]
            return [set(np.flatnonzero(roots == r).tolist()) for r in dict.fromkeys(roots.tolist())]
    raise KeyError(node_prefix)


def producer_ids(an: Analysis, graph, prefix: str) -> np.ndarray:
    return next(ids for nid, _, ids in an.producers if graph.node(nid).name.startswith(prefix))


def same_classes(an: Analysis, graph, a: str, b: str) -> bool:
    """Whether two producers write the same classes."""
    roots = an.uf.roots
    return set(roots[producer_ids(an, graph, a)].tolist()) == set(roots[producer_ids(an, graph, b)].tolist())


@pytest.mark.parametrize("fused", [False, True], ids=["instancenorm-form", "GroupNormalization"])
def test_groupnorm_groups_stay_whole_and_timestep_projection_couples(fused):
    graph, an = analyse(cg.resnet, fused_gn=fused)
    # residual stream: conv_in and conv2 write the same channels, removed a whole group (4) at a time
    assert same_classes(an, graph, "conv_in", "conv2")
    assert [len(c) for c in classes_of(an, graph, "conv_in")] == [4, 4, 4, 4]
    # the timestep Gemm is broadcast-added to conv1: its outputs are conv1's channels
    assert same_classes(an, graph, "conv1", "temb_proj")
    assert [len(c) for c in classes_of(an, graph, "conv1")] == [6, 6, 6, 6]
    assert all("groupnorm" in an.tags[r] for r in set(an.uf.roots[an.producers[0][2]].tolist()))
    # only conv_out (a graph output) is blocked
    blocked = {graph.node(n).name.split("_")[0] for n, _, ids in an.producers
               if any(r in an.blocked for r in an.uf.roots[ids].tolist())}
    assert blocked == {"conv"} and "reaches graph output" in next(iter(an.blocked.values()))[0]


def test_concat_split_depthwise():
    graph, an = analyse(cg.concat_split)
    roots = an.uf.roots
    a = classes_of(an, graph, "conv_a")
    assert len(a) == 6  # single channels
    # conv_s0 and conv_s1 are added: coupled; the depthwise conv keeps its input's channels
    assert same_classes(an, graph, "conv_s0", "conv_s1")
    dw = next(i for n, t, i in an.producers if graph.node(n).name.startswith("conv_a"))
    cat = an.info[next(n.outputs[0] for n in graph.nodes if n.op_type == "Concat")]
    depthwise = an.info[next(n.outputs[0] for n in graph.nodes if n.name.startswith("depthwise"))]
    assert np.array_equal(roots[cat.ids], roots[depthwise.ids]) and np.array_equal(roots[cat.ids[:6]], roots[dw])
    split = [n for n in graph.nodes if n.op_type == "Split"][0]
    assert np.array_equal(roots[an.info[split.outputs[1]].ids], roots[cat.ids[5:]])
    assert {s.kind for s in an.axis_sites} == {"split"} and any(s.attr == "group" for s in an.attr_sites)


def test_temporal_conv_through_frame_reshapes():
    graph, an = analyse(cg.temporal)
    assert same_classes(an, graph, "spatial", "temporal_conv")
    assert not any(r in an.blocked for r in an.uf.roots[an.producers[0][2]].tolist())


def test_resize_pad_pool_are_transparent_and_constants_sliced():
    graph, an = analyse(cg.transparent)
    ids = an.producers[0][2]
    assert not any(r in an.blocked for r in an.uf.roots[ids].tolist())
    mul = next(n for n in graph.nodes if n.name.startswith("scale_mul"))
    assert any(s.node == mul.id and s.slot == 1 and s.axis == 0 for s in an.const_sites)


@pytest.mark.parametrize("fused", [False, True], ids=["decomposed", "Attention-23"])
def test_attention_heads_are_whole_and_layernorm_is_lossy(fused):
    graph, an = analyse(cg.attention, fused=fused)
    q = classes_of(an, graph, "to_q")
    assert [len(c) for c in q] == [4, 4, 4, 4]  # 4 heads of 4 dims
    assert [sorted(c) for c in q] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert same_classes(an, graph, "to_q", "to_k") and same_classes(an, graph, "to_q", "to_v")
    assert all("head" in an.tags[r] for r in set(an.uf.roots[next(i for n, _, i in an.producers
                                                                   if graph.node(n).name.startswith("to_q"))].tolist()))
    # residual stream (embed, to_out, ff2) passes a LayerNorm: coupled, marked lossy
    assert same_classes(an, graph, "embed", "to_out") and same_classes(an, graph, "embed", "ff2")
    emb = next(i for n, _, i in an.producers if graph.node(n).name.startswith("embed"))
    assert all("LayerNormalization" in an.lossy_reasons[r][0] for r in an.uf.roots[emb].tolist())
    ff1 = classes_of(an, graph, "ff1")
    assert len(ff1) == 32 and not any(r in an.lossy_reasons for r in an.uf.roots[
        next(i for n, _, i in an.producers if graph.node(n).name.startswith("ff1"))].tolist())


def test_refusals_name_the_reason():
    graph, an = analyse(cg.refusals)
    reasons = {graph.node(n).name.rsplit("_", 1)[0]: sorted({an.blocked[r][0] for r in an.uf.roots[ids].tolist()})
               for n, _, ids in an.producers}
    assert "Hardmax" in reasons["conv_a"][0] and "not in the channel table" in reasons["conv_a"][0]
    assert "coupling through Reshape not provable" in reasons["conv_b"][0]
    assert "reaches graph output" in reasons["conv_c"][0]


def test_dynamic_shapes_without_sample_inputs_refuse_reshapes():
    model, feeds = cg.temporal()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch_frames"
    graph = onnx_io.from_proto(model)
    an = Analysis(graph)  # no feeds: the frame reshape cannot be proven
    spatial = next(i for n, _, i in an.producers if graph.node(n).name.startswith("spatial"))
    assert all(r in an.blocked for r in an.uf.roots[spatial].tolist())
    assert "not static" in an.blocked[an.uf.roots[spatial[0]]][0] or "not provable" in an.blocked[an.uf.roots[spatial[0]]][0]
    an2 = Analysis(graph, feeds)  # with sample inputs it is
    assert not any(r in an2.blocked for r in an2.uf.roots[spatial].tolist())


def test_zero_channels_have_zero_value():
    model, feeds = cg.concat_split()
    graph = onnx_io.from_proto(model)
    w = [n for n in graph.nodes if n.name.startswith("conv_a")][0].inputs[1]
    arr = np.array(graph.constant(w), copy=True)
    arr[2] = 0
    graph.set_constant(w, arr)
    an = Analysis(graph, feeds, values=True)
    out = [n for n in graph.nodes if n.name.startswith("conv_a")][0].outputs[0]
    bias = graph.constant([n for n in graph.nodes if n.name.startswith("conv_a")][0].inputs[2])
    assert an.state[out][2] == pytest.approx(float(bias[2])) and np.isnan(an.state[out][0])

"""prune-channels: option validation, structure-respecting selection, physical removal, reporting."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_ort
from tests.passes import channel_graphs as cg
from vidcc import onnx_io
from vidcc.errors import SpecError
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.pipeline import build_pipeline


@pytest.mark.parametrize("spec, message", [
    ("prune-channels{ratio=1}", "ratio must be in [0, 1)"),
    ("prune-channels{ratio=-0.1}", "ratio must be in [0, 1)"),
    ("prune-channels{ratio=lots}", "not a number"),
    ("prune-channels{criterion=l3}", "'l3' is not one of l1, l2, taylor"),
    ("prune-channels{granularity=block}", "not one of channel, group, head"),
    ("prune-channels{round_to=0}", "round_to must be an integer >= 1"),
    ("prune-channels{head_rounding=down}", "not one of up, nearest"),
    ("prune-channels{rate=0.3}", "has no option 'rate'"),
])
def test_options_are_validated(spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build_pipeline(spec)


def test_python_api_validates_too():
    from vidcc.passes.prune_channels import PruneChannels

    with pytest.raises(ValueError, match="ratio"):
        PruneChannels(ratio=1.5)
    assert PruneChannels(ratio=0.5, round_to=4).spec == "prune-channels{ratio=0.5,round_to=4}"


def prune(builder, spec, **kw):
    model, feeds = builder(**kw)
    graph = onnx_io.from_proto(model)
    ctx = run_pipeline(graph, spec, PassContext(calibration=[feeds], verify_each=True))
    verify(graph)
    run_ort(onnx_io.to_proto(graph), feeds)  # the pruned graph runs
    return graph, ctx.log[-1]


def out_channels(graph, prefix: str) -> int:
    node = next(n for n in graph.nodes if n.name.startswith(prefix))
    w = graph.constants[node.inputs[1]]
    return w.shape[1] if node.op_type == "MatMul" else w.shape[0]


def test_resnet_prunes_whole_groupnorm_groups_in_multiples_of_round_to():
    graph, rec = prune(cg.resnet, "prune-channels{ratio=0.5,round_to=8}")
    assert rec.modified and rec.lossy
    # residual stream 16 -> 8, inner width 24 -> 12 (whole groups of 6: 8 would split a group)
    assert out_channels(graph, "conv_in") == 8 and out_channels(graph, "conv2") == 8
    assert out_channels(graph, "conv1") == 12 and out_channels(graph, "temb_proj") == 12
    gn = [n for n in graph.nodes if n.op_type == "InstanceNormalization"]
    assert sorted(graph.constants[n.inputs[1]].shape[0] for n in gn) == [2, 2, 2]  # 4 groups -> 2
    s = rec.stats
    for key in ("params", "weight_bytes", "macs", "channels"):
        assert "->" in s[key] and "-" in s[key].split("(")[1]
    assert 0 <= s["cosine"] <= 1 and "psnr_db" in s
    layers = {d["node"].rsplit("_", 1)[0]: d for d in rec.details if d["kind"] == "pruned"}
    assert layers["conv1"]["channels"] == [24, 12] and layers["conv2"]["in_channels"] == [24, 12]
    assert layers["conv1"]["params"][1] < layers["conv1"]["params"][0]
    assert layers["conv1"]["macs"][1] < layers["conv1"]["macs"][0]
    summary = next(d for d in rec.details if d["kind"] == "summary")
    assert summary["params"][1] < summary["params"][0]


def test_fused_groupnorm_updates_num_groups():
    graph, rec = prune(cg.resnet, "prune-channels{ratio=0.5,round_to=1}", fused_gn=True)
    groups = sorted(n.attr("num_groups") for n in graph.nodes if n.op_type == "GroupNormalization")
    assert groups == [2, 2, 2]


def test_attention_heads_go_whole_and_residual_through_layernorm():
    graph, rec = prune(cg.attention, "prune-channels{ratio=0.5,round_to=1}")
    assert out_channels(graph, "to_q") == 8 and out_channels(graph, "to_v") == 8  # 2 of 4 heads
    shape = next(n for n in graph.nodes if n.name.startswith("q_split"))
    assert graph.constants[shape.inputs[1]].array.tolist() == [0, -1, 2, 4]
    assert out_channels(graph, "embed") == 8 and out_channels(graph, "ff1") == 16


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("rounding, heads_kept", [("up", 2), ("nearest", 3)])
def test_head_groups_round_up_by_default(fused, rounding, heads_kept):
    # 4 heads at 0.3: 2.8 heads to keep; heads round up to at least the ratio (2 kept), nearest keeps 3;
    # channel groups round to nearest either way (MLP hidden 32 -> 22)
    graph, rec = prune(cg.attention, f"prune-channels{{ratio=0.3,round_to=1,head_rounding={rounding}}}", fused=fused)
    assert out_channels(graph, "to_q") == 4 * heads_kept and out_channels(graph, "to_v") == 4 * heads_kept
    assert out_channels(graph, "ff1") == 22
    if fused:
        attn = next(n for n in graph.nodes if n.op_type == "Attention")
        assert attn.attr("q_num_heads") == heads_kept
    else:
        shape = next(n for n in graph.nodes if n.name.startswith("q_split"))
        assert graph.constants[shape.inputs[1]].array.tolist() == [0, -1, heads_kept, 4]


def test_norms_false_leaves_layernorm_coupled_channels():
    graph, rec = prune(cg.attention, "prune-channels{ratio=0.5,round_to=1,norms=false}")
    assert out_channels(graph, "embed") == 16 and out_channels(graph, "to_q") == 8


@pytest.mark.parametrize("granularity, expect", [("head", {"to_q": 8, "ff1": 32, "embed": 16}),
                                                  ("group", {"to_q": 16, "ff1": 32, "embed": 16})])
def test_granularity_limits_what_is_pruned(granularity, expect):
    model, feeds = cg.attention()
    graph = onnx_io.from_proto(model)
    ctx = run_pipeline(graph, f"prune-channels{{ratio=0.5,round_to=1,granularity={granularity}}}",
                       PassContext(calibration=[feeds]))
    for prefix, n in expect.items():
        assert out_channels(graph, prefix) == n
    assert ctx.log[-1].modified == (granularity == "head")


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor"])
def test_criteria(criterion):
    graph, rec = prune(cg.concat_split, f"prune-channels{{ratio=0.5,round_to=1,criterion={criterion}}}")
    assert rec.modified and out_channels(graph, "conv_a") + out_channels(graph, "conv_b") < 12


def test_taylor_ranks_by_activations():
    """Channel 0 of conv_a has tiny weights but a huge bias: l1 removes it, taylor keeps it."""
    def model_with_loud_channel():
        model, feeds = cg.concat_split()
        for init in model.graph.initializer:
            if init.name.startswith("conv_a.w"):
                from onnx import numpy_helper
                w = numpy_helper.to_array(init).copy()
                w[0] *= 1e-3
                init.CopyFrom(numpy_helper.from_array(w, init.name))
            if init.name.startswith("conv_a.b"):
                from onnx import numpy_helper
                b = numpy_helper.to_array(init).copy()
                b[0] = 100.0
                init.CopyFrom(numpy_helper.from_array(b, init.name))
        return model, feeds

    kept = {}
    for criterion in ("l1", "taylor"):
        model, feeds = model_with_loud_channel()
        graph = onnx_io.from_proto(model)
        run_pipeline(graph, f"prune-channels{{ratio=0.5,round_to=1,criterion={criterion},measure=false}}",
                     PassContext(calibration=[feeds]))
        conv = next(n for n in graph.nodes if n.name.startswith("conv_a"))
        kept[criterion] = float(np.abs(graph.constants[conv.inputs[2]].array).max())
    assert kept["taylor"] == pytest.approx(100.0) and kept["l1"] < 100.0


def test_ratio_zero_changes_nothing():
    model, feeds = cg.resnet()
    graph = onnx_io.from_proto(model)
    ctx = run_pipeline(graph, "prune-channels{ratio=0}", PassContext(calibration=[feeds]))
    assert not ctx.log[-1].modified


def test_prune_pipeline_on_a_zoo_model():
    zoo = pytest.importorskip("vidcc.zoo")
    pytest.importorskip("diffusers")
    exp = zoo.export("svd-unet:tiny")
    feeds = dict(np.load(exp.inputs_path))
    graph = onnx_io.load(exp.model_path)
    ctx = run_pipeline(graph, "prune", PassContext(calibration=[feeds]))
    rec = next(r for r in ctx.log if r.name == "prune-channels")
    summary = next(d for d in rec.details if d["kind"] == "summary")
    assert summary["params"][1] < 0.7 * summary["params"][0]
    out = run_ort(onnx_io.to_proto(graph), feeds)
    assert np.isfinite(next(iter(out.values()))).all()

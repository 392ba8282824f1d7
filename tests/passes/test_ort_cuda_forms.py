"""The forms vidcc emits for ORT's CUDA EP: layout-nhwc (convolutions and GroupNorms channels-last),
fuse-bias-split-gelu (GEGLU in one kernel).

The CUDA-only ops (com.microsoft NhwcConv, GroupNorm, QuickGelu, BiasSplitGelu) are checked on the CPU
with onnx's reference evaluator and small implementations of them here (NhwcConv through ORT CPU's
Conv); on the GPU, tests/gpu runs the ort-cuda targets on zoo models against the fp32 reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tests.conftest import make_model, run_ort
from tests.passes.fusion_helpers import assert_close, rand
from tests.passes.test_fusion_units import init
from vidcc import onnx_io, plugins
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline

V = helper.make_tensor_value_info


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class NhwcConv(OpRun):
    op_domain = "com.microsoft"

    def _run(self, x, w, b=None, **_):
        x, w = x.transpose(0, 3, 1, 2), w.transpose(0, 3, 1, 2)
        inputs = [V("x", T.FLOAT, x.shape), V("w", T.FLOAT, w.shape)] + ([V("b", T.FLOAT, b.shape)] if b is not None else [])
        conv = helper.make_node("Conv", [i.name for i in inputs], ["y"], **_attrs(self.onnx_node))
        model = make_model([conv], inputs, [V("y", T.FLOAT, None)])
        feeds = {"x": x, "w": w, **({"b": b} if b is not None else {})}
        return (run_ort(model, feeds)["y"].transpose(0, 2, 3, 1),)


class GroupNorm(OpRun):
    op_domain = "com.microsoft"

    def _run(self, x, gamma, beta, **_):
        a = _attrs(self.onnx_node)
        n, h, w, c = x.shape
        g = x.reshape(n, h * w, a["groups"], c // a["groups"]).astype(np.float64)
        y = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + a["epsilon"])
        y = y.reshape(x.shape) * gamma + beta
        return ((y / (1 + np.exp(-y)) if a["activation"] else y).astype(x.dtype),)


class QuickGelu(OpRun):
    op_domain = "com.microsoft"

    def _run(self, x, **_):
        return ((x / (1 + np.exp(-_attrs(self.onnx_node).get("alpha", 1.702) * x))).astype(x.dtype),)


class BiasSplitGelu(OpRun):
    op_domain = "com.microsoft"

    def _run(self, x, bias, **_):
        y = (x + bias).astype(np.float64)
        h1, h2 = np.split(y, 2, axis=-1)
        return ((h1 * 0.5 * h2 * (1 + _erf(h2 / np.sqrt(2)))).astype(x.dtype),)


def _erf(x):
    from math import erf

    return np.vectorize(erf)(x)


class MultiHeadAttention(OpRun):
    op_domain = "com.microsoft"

    def _run(self, q, k, v, *_, **__):
        a = _attrs(self.onnx_node)
        h = a["num_heads"]
        heads = [t.reshape(t.shape[0], t.shape[1], h, -1).transpose(0, 2, 1, 3).astype(np.float64) for t in (q, k, v)]
        scores = heads[0] @ heads[1].transpose(0, 1, 3, 2) * a.get("scale", heads[0].shape[-1] ** -0.5)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out = (p / p.sum(-1, keepdims=True)) @ heads[2]
        return (out.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], -1).astype(q.dtype),)


def run_reference(graph, feeds):
    proto = onnx_io.to_proto(graph)
    ref = ReferenceEvaluator(proto, new_ops=[NhwcConv, GroupNorm, QuickGelu, BiasSplitGelu, MultiHeadAttention])
    return dict(zip([o.name for o in proto.graph.output], ref.run(None, feeds)))


def _groupnorm(x: str, y: str, C: int, G: int, shape: list[int], tag: str):
    """Hand-written GroupNorm -> SiLU as an exporter writes it (Reshape-InstanceNormalization-Reshape-Mul-Add)."""
    nodes = [helper.make_node("Reshape", [x, f"{tag}_g"], [f"{tag}_r"]),
             helper.make_node("InstanceNormalization", [f"{tag}_r", f"{tag}_one", f"{tag}_zero"], [f"{tag}_n"], epsilon=1e-5),
             helper.make_node("Reshape", [f"{tag}_n", f"{tag}_shape"], [f"{tag}_r2"]),
             helper.make_node("Mul", [f"{tag}_r2", f"{tag}_gamma"], [f"{tag}_m"]),
             helper.make_node("Add", [f"{tag}_m", f"{tag}_beta"], [f"{tag}_a"]),
             helper.make_node("Sigmoid", [f"{tag}_a"], [f"{tag}_s"]), helper.make_node("Mul", [f"{tag}_a", f"{tag}_s"], [y])]
    affine = [C] + [1] * (len(shape) - 2)
    inits = [init(f"{tag}_g", np.array([0, G, -1], np.int64)), init(f"{tag}_shape", np.array(shape, np.int64)),
             init(f"{tag}_one", np.ones(G, np.float32)), init(f"{tag}_zero", np.zeros(G, np.float32)),
             init(f"{tag}_gamma", rand(*affine, seed=1)), init(f"{tag}_beta", rand(*affine, seed=2))]
    return nodes, inits


def resblock(C=8, G=2, F=3, H=4, W=5) -> onnx.ModelProto:
    """A spatial ResBlock (conv -> GroupNorm -> SiLU -> conv + skip) followed by a temporal one over
    [1, C, F, H, W] (GroupNorm -> SiLU -> Conv3d (3,1,1)), as in SVD's UNet."""
    n1, i1 = _groupnorm("h", "hs", C, G, [F, C, H, W], "gn1")
    n2, i2 = _groupnorm("t", "ts", C, G, [1, C, F, H, W], "gn2")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]), *n1,
             helper.make_node("Conv", ["hs", "w2"], ["h2"]), helper.make_node("Add", ["h2", "h"], ["res"]),
             helper.make_node("Reshape", ["res", "as5d"], ["r5"]), helper.make_node("Transpose", ["r5"], ["t"], perm=[0, 2, 1, 3, 4]),
             *n2, helper.make_node("Conv", ["ts", "w3", "b3"], ["y"], pads=[1, 0, 0, 1, 0, 0])]
    inits = [init("w1", rand(C, C, 3, 3, seed=3)), init("b1", rand(C, seed=4)), init("w2", rand(C, C, 1, 1, seed=5)),
             init("as5d", np.array([1, F, C, H, W], np.int64)), init("w3", rand(C, C, 3, 1, 1, seed=6)),
             init("b3", rand(C, seed=7)), *i1, *i2]
    return make_model(nodes, [V("x", T.FLOAT, [F, C, H, W])], [V("y", T.FLOAT, [1, C, F, H, W])], inits, opset=17)


def _compile(model, target_name: str):
    graph = onnx_io.from_proto(model)
    ctx = PassContext(target=plugins.registry().targets[target_name].obj, verify_each=True)
    run_pipeline(graph, "fuse-silu,temporal-conv-2d{force=true},layout-nhwc,dce", ctx)
    verify(graph)
    return graph, {r.name: r for r in ctx.log}


def test_resblock_runs_channels_last_with_silu_in_the_groupnorm():
    model = resblock()
    feeds = {"x": rand(3, 8, 4, 5, seed=9)}
    graph, log = _compile(model, "ort-cuda")
    hist = graph.op_histogram()
    assert hist["NhwcConv"] == 3 and hist["GroupNorm"] == 2 and "Conv" not in hist
    assert all(n.attr("activation") == 1 for n in graph.nodes_by_op("GroupNorm"))  # both SiLUs fused
    assert "InstanceNormalization" not in hist and "QuickGelu" not in hist
    stats = log["layout-nhwc"].stats
    assert stats["NhwcConv"] == "3/3" and stats["GroupNorm"] == "2/2" and stats["GroupNorm+SiLU"] == 2
    # the temporal GroupNorm and the (3,1,1) conv share the [N, F, H*W, C] view: no transposes between them
    gn5 = [n for n in graph.nodes_by_op("GroupNorm") if graph.type_of(n.inputs[0]).shape == (1, 3, 20, 8)]
    assert gn5, "the 5-D GroupNorm runs over [N, F, H*W, C]"
    (after,) = graph.consumer_nodes(gn5[0].outputs[0])
    assert after.op_type == "NhwcConv"
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_groupnorm_the_cuda_kernel_cannot_run_is_left_in_nchw():
    model = resblock(C=8, G=8)  # one channel per group: ORT's CUDA GroupNorm needs an even count
    graph, log = _compile(model, "ort-cuda")
    assert not graph.nodes_by_op("GroupNorm") and graph.op_histogram()["InstanceNormalization"] == 2
    assert log["layout-nhwc"].stats["GroupNorm"] == "0/2"
    reasons = [d["reason"] for d in log["layout-nhwc"].details if d.get("pattern") == "GroupNorm"]
    assert reasons and all("even count" in r for r in reasons)
    feeds = {"x": rand(3, 8, 4, 5, seed=9)}
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_targets_without_nhwc_kernels_are_left_alone():
    graph, log = _compile(resblock(), "ort")
    assert "skipped" in log["layout-nhwc"].stats and "NhwcConv" not in graph.op_histogram()


def geglu(width: int) -> onnx.ModelProto:
    """diffusers' GEGLU as the legacy exporter writes it: MatMul -> Add(bias) -> two Slices -> h1 * Gelu(h2)."""
    half = width // 2
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "w"], ["p"]), mk("Add", ["b", "p"], ["y"]),
             mk("Slice", ["y", "zero", "half", "last"], ["h1"]), mk("Slice", ["y", "half", "end", "last"], ["h2"]),
             mk("Gelu", ["h2"], ["g"]), mk("Mul", ["h1", "g"], ["out"])]
    inits = [init("w", rand(8, width, seed=1) * 0.3), init("b", rand(width, seed=2)), init("zero", np.array([0])),
             init("half", np.array([half])), init("end", np.array([width])), init("last", np.array([-1]))]
    return make_model(nodes, [V("x", T.FLOAT, [1, 5, 8])], [V("out", T.FLOAT, [1, 5, half])], inits, opset=20)


def test_geglu_becomes_one_bias_split_gelu():
    model = geglu(2560)
    graph = onnx_io.from_proto(model)
    ctx = PassContext(target=plugins.registry().targets["ort-cuda"].obj, verify_each=True)
    run_pipeline(graph, "fuse-bias-split-gelu", ctx)
    verify(graph)
    assert [n.op_type for n in graph.toposort()] == ["MatMul", "BiasSplitGelu"]
    assert ctx.log[-1].stats["BiasSplitGelu"] == "1/1"
    feeds = {"x": rand(1, 5, 8, seed=3)}
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_geglu_of_a_width_the_kernel_lacks_is_left_with_the_reason():
    graph = onnx_io.from_proto(geglu(512))
    ctx = PassContext(target=plugins.registry().targets["ort-cuda"].obj)
    run_pipeline(graph, "fuse-bias-split-gelu", ctx)
    assert "BiasSplitGelu" not in graph.op_histogram() and ctx.log[-1].stats["BiasSplitGelu"] == "0/1"
    assert "width 512" in ctx.log[-1].details[0]["reason"]
    ctx = PassContext(target=plugins.registry().targets["ort"].obj)  # ORT CPU has no kernel: skipped
    run_pipeline(onnx_io.from_proto(geglu(2560)), "fuse-bias-split-gelu", ctx)
    assert "skipped" in ctx.log[-1].stats["BiasSplitGelu"]


@pytest.mark.parametrize("model,groupnorms", [("svd-unet:tiny", "20/37"), ("animatediff-unet:tiny", "14/28")])
def test_unets_through_the_ort_cuda_fp16_passes_match_the_original(model, groupnorms):
    """ort-cuda-fp16's graph-shaping passes (its pipeline up to the precision passes, so the check is
    exact) on the tiny UNets, shapes bound as --static-shapes does: every conv channels-last, the
    GroupNorms the kernel takes (the rest have one channel per group) fused with their SiLUs; the result
    evaluated on the CPU equals the original graph on ORT CPU."""
    pytest.importorskip("diffusers")
    from vidcc import zoo

    exp = zoo.export(model)
    feeds = dict(np.load(exp.inputs_path))
    graph = onnx_io.load(exp.model_path)
    target = plugins.registry().targets["ort-cuda-fp16"].obj
    shaping = target.default_pipeline.split(",tag-precision")[0]
    shapes = ",".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items() if v.ndim)
    ctx = PassContext(target=target, verify_each=True)
    run_pipeline(graph, f"infer-shapes{{shapes=[{shapes}]}},{shaping}", ctx)
    stats = {r.name: r.stats for r in ctx.log}["layout-nhwc"]
    done, total = map(int, stats["NhwcConv"].split("/"))
    assert done == total > 0 and "Conv" not in graph.op_histogram() and stats["GroupNorm"] == groupnorms
    assert_close(run_ort(exp.model_path, feeds), run_reference(graph, {k: v for k, v in feeds.items() if k in graph.inputs}))

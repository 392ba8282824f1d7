"""The forms vidcc emits for ORT's CUDA EP: layout-nhwc (convolutions and GroupNorms channels-last),
fuse-skip-groupnorm (the Add before a GroupNorm in its kernel), fuse-bias-split-gelu (GEGLU in one kernel);
fuse-skip-bias's SkipLayerNormalization and BiasAdd (tested in test_fusion_skip.py) run through the same helpers.

The CUDA-only ops (com.microsoft NhwcConv, GroupNorm, SkipGroupNorm, QuickGelu, BiasSplitGelu, BiasAdd) are checked
on the CPU with onnx's reference evaluator and small implementations of them here (NhwcConv and SkipLayerNormalization
through ORT CPU's kernels); on the GPU, tests/gpu runs the ort-cuda targets on zoo models against the fp32 reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
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


class SkipGroupNorm(OpRun):
    """s = x + skip [+ bias], y = GroupNorm(s); skip (N, H, W, C), (N, 1, 1, C) or (N, C), as ORT's CUDA kernel checks."""

    op_domain = "com.microsoft"

    def _run(self, x, gamma, beta, skip, bias=None, **_):
        n, c = x.shape[0], x.shape[3]
        assert skip.shape in (x.shape, (n, 1, 1, c), (n, c)), f"skip {skip.shape} for x {x.shape}"
        assert bias is None or bias.shape == (c,), bias.shape
        s = x + skip.reshape(n, 1, 1, c) if skip.ndim == 2 else x + skip
        s = (s + bias if bias is not None else s).astype(x.dtype)
        (y,) = GroupNorm._run(self, s, gamma, beta)
        return (y, s) if len(self.onnx_node.output) > 1 else (y,)


class QuickGelu(OpRun):
    op_domain = "com.microsoft"

    def _run(self, x, **_):
        return ((x / (1 + np.exp(-_attrs(self.onnx_node).get("alpha", 1.702) * x))).astype(x.dtype),)


class FastGelu(OpRun):
    """tanh-approximated GELU of x [+ bias]."""

    op_domain = "com.microsoft"

    def _run(self, x, bias=None, **_):
        y = (x if bias is None else x + bias).astype(np.float64)
        return ((0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))).astype(x.dtype),)


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


class SkipLayerNormalization(OpRun):
    """ORT CPU's own kernel (one-node model); the shapes asserted as ORT's CUDA kernel in strict mode takes them:
    a 2-D or 3-D input, the skip of its shape, gamma/beta/bias [C] (contrib_ops/cpu/skip_layer_norm_helper.h)."""

    op_domain = "com.microsoft"

    def _run(self, x, skip, gamma, beta=None, bias=None, **_):
        c = x.shape[-1]
        assert x.ndim in (2, 3) and skip.shape == x.shape, (x.shape, skip.shape)
        beta, bias = (None if p is not None and p.size == 0 else p for p in (beta, bias))  # '' reads as empty
        assert all(p is None or p.shape == (c,) for p in (gamma, beta, bias)), "gamma/beta/bias not [C]"
        names = [n for n, v in zip(self.onnx_node.input, (x, skip, gamma, beta, bias)) if n and v is not None]
        feeds = dict(zip(names, [v for v in (x, skip, gamma, beta, bias) if v is not None]))
        node = helper.make_node("SkipLayerNormalization", list(self.onnx_node.input), ["y", "", "", "s"],
                                domain="com.microsoft", **_attrs(self.onnx_node))
        dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
        model = make_model([node], [V(n, dtype, v.shape) for n, v in feeds.items()],
                           [V("y", dtype, None), V("s", dtype, None)])
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        out = run_ort(model, feeds)
        unused = np.empty(0, np.float32)  # Mean, InvStdDev: the CUDA kernel does not write them
        return (out["y"], unused, unused, out["s"])[:len(self.onnx_node.output)]


class BiasAdd(OpRun):
    """x + bias + skip, as ORT's CUDA kernel takes them: [N, S, C] with C 320, 640 or 1280, bias [C], skip of x's
    shape (contrib_ops/cuda/diffusion/bias_add.cc)."""

    op_domain = "com.microsoft"

    def _run(self, x, bias, skip, **_):
        assert x.ndim == 3 and x.shape[2] in (320, 640, 1280) and bias.shape == (x.shape[2],), (x.shape, bias.shape)
        assert skip.shape == x.shape, (x.shape, skip.shape)
        return ((x + bias + skip).astype(x.dtype),)


def run_reference(graph, feeds):
    proto = onnx_io.to_proto(graph)
    ref = ReferenceEvaluator(proto, new_ops=[NhwcConv, GroupNorm, SkipGroupNorm, QuickGelu, FastGelu, BiasSplitGelu,
                                                     MultiHeadAttention, SkipLayerNormalization, BiasAdd])
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
    # ORT's NhwcConv shape inference needs kernel_shape (the Convs here have none): without it, session
    # creation fails on an inferred negative width before reaching the missing CPU kernel
    assert all(n.attr("kernel_shape") is not None for n in graph.nodes_by_op("NhwcConv"))
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(onnx_io.to_proto(graph).SerializeToString(), providers=["CPUExecutionProvider"])


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


def skip_resblock(C=8, G=2, N=3, H=4, W=5, bias=False) -> onnx.ModelProto:
    """diffusers' ResnetBlock2D with a time embedding, then the next block's GroupNorm on the residual:
    h = conv1(SiLU(GN1(x))) + proj(temb)[:, :, None, None]; res = x + conv2(SiLU(GN2(h))) [+ b2 as its own
    Add, `bias`]; out = conv3(SiLU(GN3(res))) + res (the residual's second reader)."""
    mk = helper.make_node
    n1, i1 = _groupnorm("x", "h0", C, G, [N, C, H, W], "gn1")
    n2, i2 = _groupnorm("h2", "h3", C, G, [N, C, H, W], "gn2")
    n3, i3 = _groupnorm("res", "g3", C, G, [N, C, H, W], "gn3")
    conv2 = [mk("Conv", ["h3", "w2"], ["h4c"]), mk("Add", ["h4c", "b2"], ["h4"])] if bias else \
        [mk("Conv", ["h3", "w2", "b2"], ["h4"])]
    nodes = [*n1, mk("Conv", ["h0", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
             mk("Gemm", ["temb", "wt", "bt"], ["e"]), mk("Unsqueeze", ["e", "hw_axes"], ["e4"]),
             mk("Add", ["h1", "e4"], ["h2"]), *n2, *conv2, mk("Add", ["x", "h4"], ["res"]), *n3,
             mk("Conv", ["g3", "w3"], ["y3"], pads=[1, 1, 1, 1]), mk("Add", ["y3", "res"], ["out"])]
    inits = [init("w1", rand(C, C, 3, 3, seed=3) * 0.3), init("b1", rand(C, seed=4)), init("wt", rand(6, C, seed=5)),
             init("bt", rand(C, seed=6)), init("hw_axes", np.array([2, 3], np.int64)),
             init("w2", rand(C, C, 1, 1, seed=7)), init("b2", rand(C, 1, 1, seed=8) if bias else rand(C, seed=8)),
             init("w3", rand(C, C, 3, 3, seed=9) * 0.3), *i1, *i2, *i3]
    return make_model(nodes, [V("x", T.FLOAT, [N, C, H, W]), V("temb", T.FLOAT, [N, 6])],
                      [V("out", T.FLOAT, [N, C, H, W])], inits, opset=17)


def _skip_compile(model, target_name="ort-cuda", extra=""):
    graph = onnx_io.from_proto(model)
    ctx = PassContext(target=plugins.registry().targets[target_name].obj, verify_each=True)
    run_pipeline(graph, f"fuse-silu,temporal-conv-2d{{force=true}},layout-nhwc,fuse-skip-groupnorm,dce{extra}", ctx)
    verify(graph)
    return graph, {r.name: r for r in ctx.log}


@pytest.mark.parametrize("bias", [False, True])
def test_resblock_adds_fold_into_skip_groupnorm(bias):
    """The time-embedding Add becomes SkipGroupNorm's (N, C) skip; the residual Add a full skip whose sum
    output serves the residual's other reader; a conv bias written as its own Add becomes the kernel's
    bias. Evaluated on the CPU, the result equals the original on ORT CPU."""
    model = skip_resblock(bias=bias)
    graph, log = _skip_compile(model)
    stats = log["fuse-skip-groupnorm"].stats
    assert stats["SkipGroupNorm"] == "2/2" and stats["SkipGroupNorm with sum output"] == 1
    assert stats["SkipGroupNorm with bias"] == int(bias)
    sgn = graph.nodes_by_op("SkipGroupNorm")
    assert len(sgn) == 2 and all(n.attr("activation") == 1 and n.attr("channels_last") == 1 for n in sgn)
    temb = next(n for n in sgn if len(graph.type_of(n.inputs[3]).shape) == 2)
    assert graph.type_of(temb.inputs[3]).shape == (3, 8)  # (N, C), broadcast over H, W by the kernel
    residual = next(n for n in sgn if n is not temb)
    assert len(residual.outputs) == 2 and graph.type_of(residual.inputs[3]).shape == (3, 4, 5, 8)
    assert len(residual.inputs) == (5 if bias else 4)
    assert graph.op_histogram()["GroupNorm"] == 1 and graph.op_histogram()["Add"] == 1  # the final y3 + res
    feeds = {"x": rand(3, 8, 4, 5, seed=10), "temb": rand(3, 6, seed=11)}
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def temporal_block(C=8, G=2, F=3, H=4, W=5, blend=False) -> onnx.ModelProto:
    """SVD's temporal ResBlock over [1, C, F, H, W]: conv (3,1,1) + a per-frame embedding [1, C, F, 1, 1],
    then the 5-D GroupNorm; `blend`: instead the AlphaBlender's a*x + b*y of two 5-D tensors read by the
    next (spatial, 4-D) GroupNorm through the [F, C, H, W] view, which its block's residual Add reads too."""
    mk = helper.make_node
    if blend:
        n, i = _groupnorm("v4", "g", C, G, [F, C, H, W], "gn")
        nodes = [mk("Conv", ["x", "w"], ["cx"], pads=[1, 0, 0, 1, 0, 0]), mk("Mul", ["cx", "alpha"], ["ax"]),
                 mk("Mul", ["x", "beta_"], ["by"]), mk("Add", ["ax", "by"], ["mix"]),
                 mk("Transpose", ["mix"], ["tf"], perm=[0, 2, 1, 3, 4]), mk("Reshape", ["tf", "as4d"], ["v4"]), *n,
                 mk("Add", ["g", "v4"], ["r4"]), mk("Reshape", ["r4", "as5d"], ["g5"]),
                 mk("Transpose", ["g5"], ["y"], perm=[0, 2, 1, 3, 4])]
        inits = [init("alpha", rand(1, 1, F, 1, 1, seed=2)), init("beta_", rand(1, 1, F, 1, 1, seed=3)),
                 init("as4d", np.array([F, C, H, W], np.int64)), init("as5d", np.array([1, F, C, H, W], np.int64))]
        inputs = [V("x", T.FLOAT, [1, C, F, H, W])]
    else:
        n, i = _groupnorm("h", "y", C, G, [1, C, F, H, W], "gn")
        nodes = [mk("Conv", ["x", "w"], ["cx"], pads=[1, 0, 0, 1, 0, 0]), mk("Add", ["cx", "emb"], ["h"]), *n]
        inits = []
        inputs = [V("x", T.FLOAT, [1, C, F, H, W]), V("emb", T.FLOAT, [1, C, F, 1, 1])]
    inits += [init("w", rand(C, C, 3, 1, 1, seed=1) * 0.3), *i]
    return make_model(nodes, inputs, [V("y", T.FLOAT, [1, C, F, H, W])], inits, opset=17)


@pytest.mark.parametrize("blend,reason", [
    (False, "varies along axis 1 of the norm's input [1, 3, 20, 8]"),  # the per-frame embedding
    (True, "3 full-size Transposes into and out of the kernel's layout where the unfused form has 2")])
def test_adds_the_kernel_cannot_take_are_left_with_the_reason(blend, reason):
    model = temporal_block(blend=blend)
    graph, log = _skip_compile(model)
    result = log["fuse-skip-groupnorm"]
    assert result.stats["SkipGroupNorm"] == "0/1" and "SkipGroupNorm" not in graph.op_histogram()
    (refusal,) = [d for d in result.details if d["kind"] == "refused"]
    assert reason in refusal["reason"], refusal["reason"]
    feeds = {k: rand(*s, seed=5) for k, s in
             {"x": (1, 8, 3, 4, 5), **({} if blend else {"emb": (1, 8, 3, 1, 1)})}.items()}
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


@pytest.mark.parametrize("xs,es,move,ops", [
    ((2, 3, 8, 4, 5), (2, 1, 8, 1, 1), "Reshape", ["Expand"]),  # one embedding per video, norm over [B*F, C, H, W]
    ((8, 3, 4, 5), (8, 3, 1, 1), "Transpose", ["Transpose"])])  # [C, N, H, W] turned NCHW: N and C swap in memory
def test_broadcast_skips_become_n_by_c(xs, es, move, ops):
    """A broadcast Add input that varies along the norm's N and C only becomes the (N, C) skip, whatever
    data movement lies between the Add and the norm."""
    mk = helper.make_node
    C = 8
    shape4 = [6, C, 4, 5] if move == "Reshape" else [3, C, 4, 5]
    n, i = _groupnorm("v", "y", C, 2, shape4, "gn")
    step = mk("Reshape", ["s", "as4d"], ["v"]) if move == "Reshape" else \
        mk("Transpose", ["s"], ["v"], perm=[1, 0, 2, 3])
    model = make_model([mk("Add", ["x", "emb"], ["s"]), step, *n], [V("x", T.FLOAT, xs), V("emb", T.FLOAT, es)],
                       [V("y", T.FLOAT, shape4)], [init("as4d", np.array(shape4, np.int64)), *i], opset=17)
    graph, log = _skip_compile(model)
    assert log["fuse-skip-groupnorm"].stats["SkipGroupNorm"] == "1/1", log["fuse-skip-groupnorm"].details
    (sgn,) = graph.nodes_by_op("SkipGroupNorm")
    assert graph.type_of(sgn.inputs[3]).shape == (shape4[0], C)
    path, t = [], sgn.inputs[3]
    while t != "emb":
        path.append(graph.producer(t).op_type)
        t = graph.producer(t).inputs[0]
    assert set(ops) <= set(path), path
    feeds = {"x": rand(*xs, seed=1), "emb": rand(*es, seed=2)}
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_skip_groupnorm_needs_static_shapes_and_a_cuda_target():
    model = skip_resblock()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for name in ("gn1_shape", "gn2_shape", "gn3_shape"):  # the GroupNorms' reshapes back: any batch
        tensor = next(t for t in model.graph.initializer if t.name == name)
        tensor.CopyFrom(init(name, np.array([0, 8, 4, 5], np.int64)))
    graph, log = _skip_compile(model)
    result = log["fuse-skip-groupnorm"]
    assert result.stats["SkipGroupNorm"] == "0/2"
    assert all("not static" in d["reason"] for d in result.details if d["kind"] == "refused")
    graph, log = _skip_compile(skip_resblock(), "ort")
    assert "skipped" in log["fuse-skip-groupnorm"].stats["SkipGroupNorm"]


def test_skip_groupnorm_is_typed_for_the_fp16_kernel():
    """gamma and beta stay fp32 (the kernel reads them as float), x, skip, bias and both outputs fp16."""
    graph, _ = _skip_compile(skip_resblock(bias=True), "ort-cuda-fp16",
                             ",tag-precision{dtype=fp16,calibrate=false},materialize-precision")
    for node in graph.nodes_by_op("SkipGroupNorm"):
        dtypes = [graph.type_of(t).dtype for t in node.inputs]
        assert dtypes[1:3] == [T.FLOAT, T.FLOAT] and {dtypes[0], *dtypes[3:]} == {T.FLOAT16}, dtypes
        assert {graph.type_of(t).dtype for t in node.outputs} == {T.FLOAT16}


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


@pytest.mark.parametrize("model,groupnorms,skips,skip_lns", [("svd-unet:tiny", "20/37", "11/18", "12/16"),
                                                             ("animatediff-unet:tiny", "14/28", "12/12", "22/29")])
def test_unets_through_the_ort_cuda_fp16_passes_match_the_original(model, groupnorms, skips, skip_lns):
    """ort-cuda-fp16's graph-shaping passes (its pipeline up to the precision passes, so the check is
    exact) on the tiny UNets, shapes bound as --static-shapes does: every conv channels-last, the
    GroupNorms the kernel takes (the rest have one channel per group) fused with their SiLUs, the Adds
    before them folded into SkipGroupNorms where the kernel takes them (SVD's temporal ResBlocks add a
    per-frame embedding: refused), the transformer blocks' residual Adds and projection biases folded into
    SkipLayerNormalizations (each norm1 reads proj_in(x) + bias, no residual: refused; BiasAdd refused at these
    widths); the result evaluated on the CPU equals the original graph on ORT CPU."""
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
    assert {r.name: r.stats for r in ctx.log}["fuse-skip-groupnorm"]["SkipGroupNorm"] == skips
    skip_bias = {r.name: r.stats for r in ctx.log}["fuse-skip-bias"]
    assert skip_bias["SkipLayerNorm"] == skip_lns and skip_bias["BiasAdd"].startswith("0/")
    assert_close(run_ort(exp.model_path, feeds), run_reference(graph, {k: v for k, v in feeds.items() if k in graph.inputs}))


def test_wan_through_the_ort_cuda_fp16_passes_keeps_heads_in_place_and_matches_the_original():
    """wan-dit:tiny through ort-cuda-fp16's graph-shaping passes: the rotary embedding's interleave is a Gather
    over the head dim (scatter-rows), self- and cross-attention are MultiHeadAttention on [B, S, H*D] so no
    Transpose is left but the patch embedding's and the unpatchify's, the FFN bias rides in FastGelu (its
    MatMul stays bias-free); evaluated on the CPU it equals the original graph on ORT CPU."""
    pytest.importorskip("diffusers")
    from vidcc import zoo

    exp = zoo.export("wan-dit:tiny")
    feeds = dict(np.load(exp.inputs_path))
    graph = onnx_io.load(exp.model_path)
    target = plugins.registry().targets["ort-cuda-fp16"].obj
    ctx = PassContext(target=target, verify_each=True)
    run_pipeline(graph, target.default_pipeline.split(",tag-precision")[0], ctx)
    hist = graph.op_histogram()
    assert hist["MultiHeadAttention"] == 4 and "Attention" not in hist and hist["Transpose"] == 2
    # two FFNs and the text embedding's, each with its bias
    assert hist["FastGelu"] == 3 and all(len(n.inputs) == 2 for n in graph.nodes_by_op("FastGelu"))
    assert "ScatterND" not in hist
    assert_close(run_ort(exp.model_path, feeds), run_reference(graph, {k: v for k, v in feeds.items() if k in graph.inputs}))

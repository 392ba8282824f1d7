"""Each fusion on small hand-written graphs: op list out, ORT numerics before/after, target-aware forms."""

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model
from tests.passes.fusion_helpers import MS, ORT_CPU, TVM, check, ops, parse, rand
from vidcc import onnx_io, opsets, plugins
from vidcc.pass_manager import PassContext, run_pipeline

V = helper.make_tensor_value_info


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def groupnorm_reducemean(opset=17):
    """Hand-written GroupNorm: Reshape -> mean/var by ReduceMean -> Reshape -> affine -> SiLU."""
    C, G = 8, 4
    rm = (lambda i, o: helper.make_node("ReduceMean", [i], [o], axes=[2], keepdims=1)) if opset < 18 else \
        (lambda i, o: helper.make_node("ReduceMean", [i, "ax"], [o], keepdims=1))
    nodes = [helper.make_node("Reshape", ["x", "gshape"], ["r"]), rm("r", "mean"),
             helper.make_node("Sub", ["r", "mean"], ["d"]), helper.make_node("Pow", ["d", "two"], ["sq"]),
             rm("sq", "var"), helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["n"]), helper.make_node("Reshape", ["n", "xshape"], ["r2"]),
             helper.make_node("Mul", ["r2", "gamma"], ["m"]), helper.make_node("Add", ["m", "beta"], ["gn"]),
             helper.make_node("Sigmoid", ["gn"], ["s"]), helper.make_node("Mul", ["gn", "s"], ["y"])]
    inits = [init("gshape", np.array([0, G, -1], np.int64)), init("xshape", np.array([2, C, 3, 3], np.int64)),
             init("two", np.float32(2.0)), init("eps", np.float32(1e-5)), init("ax", np.array([2], np.int64)),
             init("gamma", rand(C, 1, 1, seed=1)), init("beta", rand(C, 1, 1, seed=2))]
    return make_model(nodes, [V("x", T.FLOAT, [2, C, 3, 3])], [V("y", T.FLOAT, [2, C, 3, 3])], inits, opset=opset)


def test_groupnorm_reducemean_form_for_ort_becomes_instancenorm_form():
    # ORT CPU: the channel affine as one BatchNormalization(mean 0, var 1, epsilon 0), bit-exact x * s + b
    graph, log = check(groupnorm_reducemean(), "fuse-groupnorm,fuse-silu,dce", {"x": rand(2, 8, 3, 3)}, target=ORT_CPU)
    assert ops(graph) == ["Reshape", "InstanceNormalization", "Reshape", "BatchNormalization", "com.microsoft::QuickGelu"]
    bn = graph.toposort()[3]
    assert bn.attr("epsilon") == 0.0 and np.all(graph.constant(bn.inputs[3]) == 0) and np.all(graph.constant(bn.inputs[4]) == 1)
    assert log["fuse-groupnorm"].stats == {"GroupNorm": "1/1"}
    # that form is recognised and kept as it is (running the pass again changes nothing)
    again = PassContext(target=ORT_CPU, verify_each=True)
    run_pipeline(graph, "fuse-groupnorm", again)
    assert again.log[0].stats == {"GroupNorm": "1/1", "GroupNorm kept": 1} and "BatchNormalization" in ops(graph)
    # Mul + Add on request (and for other ORT targets, where it is not measured)
    graph, _ = check(groupnorm_reducemean(), "fuse-groupnorm{affine=Mul-Add},fuse-silu,dce", {"x": rand(2, 8, 3, 3)},
                     target=ORT_CPU)
    assert ops(graph) == ["Reshape", "InstanceNormalization", "Reshape", "Mul", "Add", "com.microsoft::QuickGelu"]


@pytest.mark.parametrize("opset", [17, 18])
def test_groupnorm_to_groupnormalization_21_for_tvm(opset):
    graph, log = check(groupnorm_reducemean(opset), "fuse-groupnorm,fuse-silu,dce", {"x": rand(2, 8, 3, 3)}, target=TVM)
    assert ops(graph) == ["GroupNormalization", "Sigmoid", "Mul"]
    assert graph.opsets[""] == 21
    assert log["fuse-silu"].stats == {"SiLU": "0/1"}  # TVM takes neither Swish nor QuickGelu


def test_groupnorm_instancenorm_form_folds_group_affine():
    nodes = [helper.make_node("Reshape", ["x", "gshape"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "s", "b"], ["n"], epsilon=1e-6),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Reshape", ["n", "xs"], ["r2"]),
             helper.make_node("Mul", ["r2", "gamma"], ["m"]), helper.make_node("Add", ["m", "beta"], ["y"])]
    inits = [init("gshape", np.array([0, 2, -1], np.int64)), init("s", rand(2, seed=3)), init("b", rand(2, seed=4)),
             init("gamma", rand(4, 1, 1, 1, seed=1)), init("beta", rand(4, 1, 1, 1, seed=2))]
    model = make_model(nodes, [V("x", T.FLOAT, ["N", 4, 2, 3, 3])], [V("y", T.FLOAT, None)], inits)
    graph, log = check(model, "fuse-groupnorm{form=GroupNormalization},dce", {"x": rand(3, 4, 2, 3, 3)})
    assert ops(graph) == ["GroupNormalization"]
    # ORT keeps the canonical form as it is, and says why
    graph, log = check(model, "fuse-groupnorm", {"x": rand(3, 4, 2, 3, 3)}, target=ORT_CPU)
    assert log["fuse-groupnorm"].stats["GroupNorm"] == "1/1"
    assert "InstanceNormalization" in ops(graph)


def test_groupnorm_leaves_a_non_channel_affine_outside():
    nodes = [helper.make_node("Reshape", ["x", "gshape"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "s", "b"], ["n"]),
             helper.make_node("Reshape", ["n", "xshape"], ["r2"]),
             helper.make_node("Mul", ["r2", "gamma"], ["y"])]
    inits = [init("gshape", np.array([0, 2, -1], np.int64)), init("s", np.ones(2, np.float32)),
             init("b", np.zeros(2, np.float32)), init("xshape", np.array([1, 4, 3], np.int64)),
             init("gamma", rand(3, seed=1))]  # varies along the last axis, not the channels
    model = make_model(nodes, [V("x", T.FLOAT, [1, 4, 3])], [V("y", T.FLOAT, None)], inits)
    graph, log = check(model, "fuse-groupnorm{form=GroupNormalization},dce", {"x": rand(1, 4, 3)})
    assert log["fuse-groupnorm"].stats == {"GroupNorm": "1/1"}
    assert ops(graph) == ["GroupNormalization", "Mul"]  # the Mul is not a per-channel affine: it stays


LAYERNORM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 5, 16] x) => (float[2, 5, 16] y) {
    mean = ReduceMean<axes = [-1], keepdims = 1>(x)
    d = Sub(x, mean)
    sq = Mul(d, d)
    var = ReduceMean<axes = [-1], keepdims = 1>(sq)
    eps = Constant<value = float {1e-5}>()
    ve = Add(var, eps)
    std = Sqrt(ve)
    r = Reciprocal(std)
    n = Mul(d, r)
    gamma = Constant<value = float[16] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}>()
    beta = Constant<value = float[16] {0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1}>()
    m = Mul(n, gamma)
    y = Add(beta, m)
}
"""


def test_layernorm_fusion():
    graph, log = check(parse(LAYERNORM), "fold-constants,fuse-layernorm,dce", {"x": rand(2, 5, 16)})
    assert ops(graph) == ["LayerNormalization"]
    assert log["fuse-layernorm"].stats == {"LayerNorm": "1/1"}


RMSNORM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 5, 16] x) => (float[2, 5, 16] y) {
    two = Constant<value = float {2.0}>()
    sq = Pow(x, two)
    ms = ReduceMean<axes = [-1], keepdims = 1>(sq)
    eps = Constant<value = float {1e-6}>()
    a = Add(ms, eps)
    s = Sqrt(a)
    n = Div(x, s)
    w = Constant<value = float[16] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}>()
    y = Mul(n, w)
}
"""


def test_rmsnorm_fusion_raises_opset_and_converts_reduce_axes():
    text = RMSNORM.replace("y = Mul(n, w)", "y0 = Mul(n, w)\n    y = ReduceMax<axes = [0], keepdims = 1>(y0)").replace(
        "=> (float[2, 5, 16] y)", "=> (float[1, 5, 16] y)")
    graph, log = check(parse(text), "fold-constants,fuse-rmsnorm,dce", {"x": rand(2, 5, 16)})
    assert ops(graph) == ["RMSNormalization", "ReduceMax"]
    assert graph.opsets[""] == 23
    rmax = graph.nodes_by_op("ReduceMax")[0]
    assert rmax.attr("axes") is None and graph.constant(rmax.inputs[1]).tolist() == [0]


def test_opset_raise_refused_names_the_blocking_op():
    text = RMSNORM.replace("y = Mul(n, w)", "y0 = Mul(n, w)\n    y = GridSample(y0, grid)").replace(
        "(float[2, 5, 16] x)", "(float[2, 5, 16] x, float[2, 5, 16, 2] grid)").replace(
        "=> (float[2, 5, 16] y)", "=> (float[2, 5, 5, 16] y)")
    model = parse(text.replace("float[2, 5, 16] x,", "float[2, 5, 5, 16] x,").replace("float[2, 5, 16, 2] grid", "float[2, 5, 16, 2] grid"))
    graph = onnx_io.from_proto(model)
    ctx = run_pipeline(graph, "fold-constants,fuse-rmsnorm", PassContext())
    rec = ctx.log[-1]
    assert rec.stats == {"RMSNorm": "0/1"} and "GridSample" in rec.details[0]["reason"]
    assert graph.opsets[""] == 17
    assert opsets.blocker(graph, 23).startswith("GridSample")


GELU_ERF = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 32] x) => (float[4, 32] y) {
    c = Constant<value = float {1.4142135}>()
    d = Div(x, c)
    e = Erf(d)
    one = Constant<value = float {1.0}>()
    a = Add(e, one)
    m = Mul(x, a)
    half = Constant<value = float {0.5}>()
    y = Mul(m, half)
}
"""

GELU_TANH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 32] x) => (float[4, 32] y) {
    three = Constant<value = float {3.0}>()
    x3 = Pow(x, three)
    k = Constant<value = float {0.044715}>()
    kx3 = Mul(k, x3)
    p = Add(x, kx3)
    c = Constant<value = float {0.7978845608}>()
    u = Mul(c, p)
    t = Tanh(u)
    one = Constant<value = float {1.0}>()
    a = Add(one, t)
    half = Constant<value = float {0.5}>()
    hx = Mul(half, x)
    y = Mul(hx, a)
}
"""


@pytest.mark.parametrize("text,approx", [(GELU_ERF, None), (GELU_TANH, "tanh")])
def test_gelu_forms(text, approx):
    graph, log = check(parse(text), "fold-constants,fuse-gelu,dce", {"x": rand(4, 32) * 3})
    assert ops(graph) == ["Gelu"] and graph.opsets[""] == 20
    assert graph.nodes_by_op("Gelu")[0].attr("approximate") == (approx.encode() if approx else None)
    assert log["fuse-gelu"].stats == {"Gelu": "1/1"}


def test_silu_for_default_target_is_swish_24():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 32] x) => (float[4, 32] y) {
        s = Sigmoid(x)
        y = Mul(s, x)
    }""")
    graph, _ = check(model, "fuse-silu,dce", {"x": rand(4, 32)})
    assert ops(graph) == ["Swish"] and graph.opsets[""] == 24


def attention_model(form="legacy", Sq=6, Sk=6, H=2, D=4, scaling="both"):
    """Multi-head SDPA as the exporters write it around q,k,v [B,S,H*D] inputs."""
    B, C = 2, H * D
    nodes = [helper.make_node("Reshape", ["q", "qs"], ["q1"]), helper.make_node("Transpose", ["q1"], ["q2"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["k", "ks"], ["k1"]), helper.make_node("Reshape", ["v", "ks"], ["v1"]),
             helper.make_node("Transpose", ["v1"], ["v2"], perm=[0, 2, 1, 3])]
    inits = [init("qs", np.array([B, Sq, H, D], np.int64)), init("ks", np.array([B, Sk, H, D], np.int64)),
             init("os", np.array([B, Sq, C], np.int64)), init("c", np.float32(D ** -0.25)),
             init("flat", np.array([B * H, Sk, D], np.int64)), init("unflat", np.array([B, H, D, Sk], np.int64)),
             init("div", np.float32(np.sqrt(D)))]
    if form == "legacy":
        nodes.append(helper.make_node("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]))
    else:
        nodes += [helper.make_node("Transpose", ["k1"], ["k2"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["k2", "flat"], ["k3"]),
                  helper.make_node("Transpose", ["k3"], ["k4"], perm=[0, 2, 1]),
                  helper.make_node("Reshape", ["k4", "unflat"], ["kt"])]
    if scaling == "both":
        nodes += [helper.make_node("Mul", ["q2", "c"], ["qq"]), helper.make_node("Mul", ["kt", "c"], ["kk"]),
                  helper.make_node("MatMul", ["qq", "kk"], ["s"])]
    else:
        nodes += [helper.make_node("MatMul", ["q2", "kt"], ["s0"]), helper.make_node("Div", ["s0", "div"], ["s"])]
    nodes += [helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v2"], ["o"]),
              helper.make_node("Transpose", ["o"], ["o1"], perm=[0, 2, 1, 3]), helper.make_node("Reshape", ["o1", "os"], ["y"])]
    ins = [V("q", T.FLOAT, [B, Sq, C]), V("k", T.FLOAT, [B, Sk, C]), V("v", T.FLOAT, [B, Sk, C])]
    feeds = {"q": rand(B, Sq, C, seed=1), "k": rand(B, Sk, C, seed=2), "v": rand(B, Sk, C, seed=3)}
    return make_model(nodes, ins, [V("y", T.FLOAT, [B, Sq, C])], inits, opset=17), feeds


@pytest.mark.parametrize("form", ["legacy", "dynamo"])
@pytest.mark.parametrize("target,sk,op", [(None, 3, "Attention"), (ORT_CPU, 3, "Attention"),
                                          (ORT_CPU, 65, "com.microsoft::MultiHeadAttention")])
def test_attention_forms_and_targets(form, target, sk, op):
    model, feeds = attention_model(form, Sq=6, Sk=sk)  # cross-attention: sk keys
    graph, log = check(model, "fuse-attention,dce", feeds, target=target)
    assert ops(graph) == [op]
    node = graph.toposort()[0]
    assert node.attr("scale") == pytest.approx(0.5)
    stats = log["fuse-attention"].stats
    if target is None:  # no choice to make: standard Attention-23
        assert stats == {"Attention": "1/1"}
    else:  # the ORT CPU choice goes by the key length, and says so
        assert stats == {"Attention": "1/1", f"emitted {'MultiHeadAttention' if 'Multi' in op else 'Attention-23'}": 1}
        why = log["fuse-attention"].details[0]["emitted"]
        assert (f"{sk} keys <= 64" if sk <= 64 else f"{sk} keys > 64") in why


def test_attention_on_ort_cpu_short_kv_option_and_explicit_form():
    model, feeds = attention_model("legacy", Sq=6, Sk=3)
    graph, _ = check(model, "fuse-attention{short_kv=2},dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["com.microsoft::MultiHeadAttention"]
    graph, _ = check(model, "fuse-attention{form=MultiHeadAttention},dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["com.microsoft::MultiHeadAttention"] and graph.opsets[""] == 17


def test_attention_scores_divided_and_refused_for_tvm():
    model, feeds = attention_model("legacy", scaling="div")
    graph, log = check(model, "fuse-attention,dce", feeds)
    assert ops(graph) == ["Attention"]
    graph, log = check(model, "fuse-attention", feeds, target=TVM)
    rec = log["fuse-attention"]
    assert rec.stats == {"Attention": "0/1"} and "does not accept Attention" in rec.details[0]["reason"]


def test_attention_with_mask_is_refused_with_reason():
    model, feeds = attention_model("legacy")
    g = model.graph
    for n in g.node:
        if n.op_type == "Softmax":
            n.input[0] = "masked"
    g.node.insert(len(g.node) - 4, helper.make_node("Add", ["s", "mask"], ["masked"]))
    g.input.append(V("mask", T.FLOAT, [2, 2, 6, 6]))
    feeds["mask"] = rand(2, 2, 6, 6)
    graph, log = check(model, "fuse-attention", feeds)
    rec = log["fuse-attention"]
    assert rec.stats == {"Attention": "0/1"}
    assert "expected MatMul, found Add" in rec.details[0]["reason"]


def test_qkv_packing_with_biases():
    W = [rand(8, 8, seed=i) for i in range(3)]
    nodes, inits = [], [init("x_w", rand(8, 8))]
    for i, name in enumerate("qkv"):
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [name])]
        inits += [init(f"w{i}", W[i]), init(f"b{i}", rand(8, seed=10 + i))]
    nodes.append(helper.make_node("Sum", ["q", "k", "v"], ["y"]))
    model = make_model(nodes, [V("x", T.FLOAT, [2, 5, 8])], [V("y", T.FLOAT, None)], inits)
    graph, log = check(model, "fuse-qkv,dce", {"x": rand(2, 5, 8)}, target=TVM)
    assert ops(graph) == ["MatMul", "Add", "Split", "Sum"]
    assert log["fuse-qkv"].stats == {"QKV": "1/1"}
    # ORT CPU: MatMul + Split is slower than three MatMuls there, so nothing is packed ...
    graph, log = check(model, "fuse-qkv,dce", {"x": rand(2, 5, 8)}, target=ORT_CPU)
    assert "skipped" in log["fuse-qkv"].stats["QKV"] and ops(graph).count("MatMul") == 3
    # ... and a packed projection is unpacked again
    packed = onnx_io.to_proto(check(model, "fuse-qkv,dce", {"x": rand(2, 5, 8)}, target=TVM)[0])
    graph, log = check(packed, "unpack-projections,dce", {"x": rand(2, 5, 8)}, target=ORT_CPU)
    assert sorted(ops(graph)) == ["Add"] * 3 + ["MatMul"] * 3 + ["Sum"]
    assert log["unpack-projections"].stats == {"Unpack": "1/1"}


def test_unpack_geglu_slices():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 8] x) => (float[2, 5, 6] y) {
        w = Constant<value = float[8, 12] {""" + ",".join(str(v) for v in np.round(rand(96).tolist(), 3)) + """}>()
        b = Constant<value = float[12] {1,2,3,4,5,6,7,8,9,10,11,12}>()
        m = MatMul(x, w)
        p = Add(b, m)
        z = Constant<value = int64[1] {0}>()
        six = Constant<value = int64[1] {6}>()
        big = Constant<value = int64[1] {12}>()
        ax = Constant<value = int64[1] {-1}>()
        h = Slice(p, z, six, ax)
        gate = Slice(p, six, big, ax)
        y = Mul(h, gate)
    }""")
    graph, log = check(model, "fold-constants,unpack-projections,dce", {"x": rand(2, 5, 8)}, target=ORT_CPU)
    assert sorted(ops(graph)) == ["Add", "Add", "MatMul", "MatMul", "Mul"]


def test_gemm_only_for_2d():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"]),
                        helper.make_node("MatMul", ["x3", "w"], ["m3"]), helper.make_node("Add", ["m3", "b"], ["y3"])],
                       [V("x", T.FLOAT, [4, 8]), V("x3", T.FLOAT, [2, 4, 8])], [V("y", T.FLOAT, None), V("y3", T.FLOAT, None)],
                       [init("w", rand(8, 6)), init("b", rand(6))])
    graph, log = check(model, "fuse-gemm,dce", {"x": rand(4, 8), "x3": rand(2, 4, 8)})
    assert sorted(ops(graph)) == ["Add", "Gemm", "MatMul"]
    assert log["fuse-gemm"].stats == {"Gemm": "1/2"}
    assert "3-D" in log["fuse-gemm"].details[-1]["reason"] or "3-D" in log["fuse-gemm"].details[0]["reason"]


def test_conv_batchnorm_folding():
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["y"], epsilon=1e-3)],
                       [V("x", T.FLOAT, [1, 3, 5, 5])], [V("y", T.FLOAT, None)],
                       [init("w", rand(4, 3, 3, 3)), init("b", rand(4, seed=1)), init("s", rand(4, seed=2)),
                        init("bb", rand(4, seed=3)), init("mean", rand(4, seed=4)), init("var", np.abs(rand(4, seed=5)) + 0.1)])
    graph, log = check(model, "fuse-conv-bn,dce", {"x": rand(1, 3, 5, 5)})
    assert ops(graph) == ["Conv"] and log["fuse-conv-bn"].stats == {"ConvBN": "1/1"}


def test_skip_layernorm_only_where_it_pays():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 16] a, float[2, 5, 16] b) => (float[2, 5, 16] y, float[2, 5, 16] r) {
        s = Add(a, b)
        g1 = Constant<value = float[16] {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}>()
        b1 = Constant<value = float[16] {0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1}>()
        y = LayerNormalization<axis = -1>(s, g1, b1)
        r = Relu(s)
    }""")
    feeds = {"a": rand(2, 5, 16), "b": rand(2, 5, 16, seed=1)}
    graph, log = check(model, "fold-constants,fuse-skip-layernorm,dce", feeds, target=ORT_CPU)
    assert "skipped" in log["fuse-skip-layernorm"].stats["SkipLayerNorm"]
    graph, log = check(model, "fold-constants,fuse-skip-layernorm{force=true},dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["com.microsoft::SkipLayerNormalization", "Relu"]
    assert graph.outputs == ["y", "r"]


def cross_attention_block(Sk=1, form="legacy"):
    """x + out_proj(attention(x Wq, enc Wk, enc Wv)): the cross-attention of a UNet block."""
    base, _ = attention_model(form, Sq=6, Sk=Sk)
    B, C = 2, 8
    g = base.graph
    pre = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["enc", "wk"], ["k"]),
           helper.make_node("MatMul", ["enc", "wv"], ["v"])]
    post = [helper.make_node("MatMul", ["y", "wo"], ["proj"]), helper.make_node("Add", ["proj", "bo"], ["ob"]),
            helper.make_node("Add", ["ob", "x"], ["out"])]
    inits = list(g.initializer) + [init(n, rand(C, C, seed=i)) for i, n in enumerate(["wq", "wk", "wv", "wo"])]
    inits.append(init("bo", rand(C, seed=7)))
    model = make_model(pre + list(g.node) + post, [V("x", T.FLOAT, [B, 6, C]), V("enc", T.FLOAT, [B, Sk, C])],
                       [V("out", T.FLOAT, [B, 6, C])], inits)
    return model, {"x": rand(B, 6, C, seed=1), "enc": rand(B, Sk, C, seed=2)}


@pytest.mark.parametrize("target,form", [(ORT_CPU, "legacy"), (None, "dynamo")])
def test_single_key_attention_folds_to_broadcast_value(target, form):
    model, feeds = cross_attention_block(Sk=1, form=form)
    graph, log = check(model, "fuse-attention,fuse-single-key-attention", feeds, target=target)
    # the query side is gone, the out projection runs on the one row, the residual Add broadcasts it
    assert ops(graph) == ["MatMul", "MatMul", "Add", "Add"]
    stats = log["fuse-single-key-attention"].stats
    assert stats["SingleKey"] == "1/1" and stats["broadcasts moved down"] == 3
    assert graph.type_of(graph.toposort()[2].outputs[0]).shape == (2, 1, 8)


def test_single_key_attention_refused_for_several_keys_and_kept_as_expand_at_an_output():
    model, feeds = cross_attention_block(Sk=3)
    graph, log = check(model, "fuse-attention,fuse-single-key-attention", feeds, target=ORT_CPU)
    rec = log["fuse-single-key-attention"]
    assert rec.stats["SingleKey"] == "0/1" and "not one token long" in rec.details[0]["reason"]
    model, feeds = attention_model(Sq=6, Sk=1)  # attention straight into the graph output
    graph, log = check(model, "fuse-attention,fuse-single-key-attention", feeds, target=ORT_CPU)
    assert ops(graph) == ["Expand"]


def test_temporal_conv_as_2d_on_ort_cpu_only():
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 0, 1, 0, 0]),
                        helper.make_node("Conv", ["c", "w2"], ["y"], pads=[1, 1, 1, 1, 1, 1])],  # a 3x3x3 one stays
                       [V("x", T.FLOAT, [1, 4, 5, 3, 3])], [V("y", T.FLOAT, None)],
                       [init("w", rand(6, 4, 3, 1, 1)), init("b", rand(6, seed=1)), init("w2", rand(2, 6, 3, 3, 3, seed=2))])
    feeds = {"x": rand(1, 4, 5, 3, 3)}
    graph, log = check(model, "infer-shapes,temporal-conv-2d,dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["Reshape", "Conv", "Reshape", "Conv"]
    assert graph.type_of(graph.toposort()[1].outputs[0]).shape == (1, 6, 5, 9)
    assert log["temporal-conv-2d"].stats == {"TemporalConv": "1/2"}
    graph, log = check(model, "infer-shapes,temporal-conv-2d,dce", feeds, target=TVM)
    assert ops(graph) == ["Conv", "Conv"] and "skipped" in log["temporal-conv-2d"].stats["TemporalConv"]


def test_bias_gelu_for_ort_cpu_only():
    from vidcc.target import Target

    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                        helper.make_node("Gelu", ["a"], ["y"])],
                       [V("x", T.FLOAT, [2, 5, 8])], [V("y", T.FLOAT, None)], [init("w", rand(8, 6)), init("b", rand(6, seed=1))],
                       opset=20)
    ort = Target(name="ort", accepted_ops={**ORT_CPU.accepted_ops, "BiasGelu": MS})
    graph, log = check(model, "fuse-bias-gelu,dce", {"x": rand(2, 5, 8)}, target=ort)
    assert ops(graph) == ["MatMul", "com.microsoft::BiasGelu"] and log["fuse-bias-gelu"].stats == {"BiasGelu": "1/1"}
    for target in (ORT_CPU, TVM):  # neither accepts it
        graph, log = check(model, "fuse-bias-gelu,dce", {"x": rand(2, 5, 8)}, target=target)
        assert ops(graph) == ["MatMul", "Add", "Gelu"] and not log["fuse-bias-gelu"].modified


@pytest.mark.parametrize("gelu,domain", [("Gelu", ""), ("FastGelu", "com.microsoft")])
def test_bias_and_tanh_gelu_become_fast_gelu_with_its_bias(gelu, domain):
    """Wan's FFN: MatMul + bias -> tanh GELU. FastGelu takes the bias, so the MatMul stays bias-free on ORT CUDA
    (where the pass runs forced); a FastGelu that already has a bias is not matched again."""
    attrs = {"approximate": "tanh"} if domain == "" else {}
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                        helper.make_node(gelu, ["a"], ["y"], domain=domain, **attrs)],
                       [V("x", T.FLOAT, [2, 5, 8])], [V("y", T.FLOAT, None)], [init("w", rand(8, 6)), init("b", rand(6, seed=1))],
                       opset=20)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    cuda = plugins.registry().targets["ort-cuda-fp16"].obj
    graph, log = check(model, "fuse-bias-gelu{force=true},dce", {"x": rand(2, 5, 8)}, target=cuda)
    assert ops(graph) == ["MatMul", "com.microsoft::FastGelu"] and log["fuse-bias-gelu"].stats == {"BiasGelu": "1/1"}
    assert len(graph.nodes_by_op("FastGelu")[0].inputs) == 2
    ctx = PassContext(target=cuda)
    run_pipeline(graph, "fuse-bias-gelu{force=true}", ctx)
    assert not ctx.log[-1].modified


def upsample_conv(coord="asymmetric", rounding="floor", dims=(2, 6, 4, 5), bias=True, mode="nearest"):
    """Resize(nearest 2x) -> Conv 3x3 pad 1 (a UNet Upsample2D), then a Relu reading the result."""
    N, C, H, W = dims
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if mode == "nearest":
        attrs["nearest_mode"] = rounding
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["u"], **attrs),
             helper.make_node("Conv", ["u", "w"] + (["b"] if bias else []), ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [init("scales", np.array([1, 1, 2, 2], np.float32)), init("w", rand(3, C, 3, 3, seed=1)),
             init("b", rand(3, seed=2))]
    x_shape = [N, C, H, W] if all(isinstance(d, int) for d in dims) else list(dims)
    return make_model(nodes, [V("x", T.FLOAT, x_shape)], [V("y", T.FLOAT, None)], inits)


@pytest.mark.parametrize("coord,rounding,bias", [("asymmetric", "floor", True), ("half_pixel", "round_prefer_floor", False),
                                                 ("pytorch_half_pixel", "round_prefer_ceil", True)])
def test_upsample_conv_as_four_phase_convs_on_ort_cpu(coord, rounding, bias):
    feeds = {"x": rand(2, 6, 4, 5)}
    graph, log = check(upsample_conv(coord, rounding, bias=bias), "infer-shapes,fuse-upsample-conv,dce", feeds,
                       target=ORT_CPU)
    kinds = ops(graph)
    assert "Resize" not in kinds and kinds.count("Conv") == 4 and kinds[-1] == "Relu"
    convs = [n for n in graph.toposort() if n.op_type == "Conv"]
    assert {tuple(n.attr("pads")) for n in convs} == {(1, 1, 0, 0), (1, 0, 0, 1), (0, 1, 1, 0), (0, 0, 1, 1)}
    assert all(graph.constant(n.inputs[1]).shape == (3, 6, 2, 2) for n in convs)
    assert graph.type_of(graph.outputs[0]).shape == (2, 3, 8, 10)
    assert log["fuse-upsample-conv"].stats == {"UpsampleConv": "1/1"}


def test_upsample_conv_dynamic_shapes_use_depth_to_space_and_other_targets_skip():
    model = upsample_conv(dims=("N", 6, "H", "W"))
    graph, log = check(model, "fuse-upsample-conv,dce", {"x": rand(3, 6, 5, 4)}, target=ORT_CPU)
    assert ops(graph)[-3:] == ["Concat", "DepthToSpace", "Relu"] and ops(graph).count("Conv") == 4
    graph, log = check(model, "fuse-upsample-conv,dce", {"x": rand(3, 6, 5, 4)}, target=TVM)
    assert ops(graph) == ["Resize", "Conv", "Relu"] and "skipped" in log["fuse-upsample-conv"].stats["UpsampleConv"]


@pytest.mark.parametrize("coord,mode,why", [("align_corners", "nearest", "floor(i/2)"), ("asymmetric", "linear", "not nearest")])
def test_upsample_conv_refused_with_reason(coord, mode, why):
    graph, log = check(upsample_conv(coord, "floor", mode=mode), "infer-shapes,fuse-upsample-conv", {"x": rand(2, 6, 4, 5)},
                       target=ORT_CPU)
    rec = log["fuse-upsample-conv"]
    assert ops(graph) == ["Resize", "Conv", "Relu"] and rec.stats == {"UpsampleConv": "0/1"}
    assert why in rec.details[0]["reason"]


def alpha_blend(a=0.3, b=0.7, through_conv=True):
    """diffusers' AlphaBlender after a residual block: a * x + b * (x + r), r = Conv(Relu(x)) or Relu(x)."""
    nodes = [helper.make_node("Relu", ["x"], ["h"])]
    if through_conv:
        nodes += [helper.make_node("Conv", ["h", "w", "cb"], ["r"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    else:
        nodes += [helper.make_node("Neg", ["h"], ["r"])]
    nodes += [helper.make_node("Add", ["x", "r"], ["res"]), helper.make_node("Mul", ["a", "x"], ["ax"]),
              helper.make_node("Mul", ["b", "res"], ["br"]), helper.make_node("Add", ["ax", "br"], ["y"])]
    inits = [init("w", rand(4, 4, 3, 3, seed=1) * 0.3), init("cb", rand(4, seed=2)),
             init("a", np.full((1, 1, 1, 1), a, np.float32)), init("b", np.full((1, 1, 1, 1), b, np.float32))]
    return make_model(nodes, [V("x", T.FLOAT, [2, 4, 5, 5])], [V("y", T.FLOAT, None)], inits)


def test_alpha_blend_folds_into_the_residual_conv_on_ort_cpu():
    feeds = {"x": rand(2, 4, 5, 5)}
    graph, log = check(alpha_blend(), "infer-shapes,fuse-alpha-blend,dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["Relu", "Conv", "Add"] and log["fuse-alpha-blend"].stats == {"AlphaBlend": "1/1"}
    conv = graph.toposort()[1]
    assert np.allclose(graph.constant(conv.inputs[1]), rand(4, 4, 3, 3, seed=1) * 0.3 * 0.7)
    # r not from a Conv: x + b * r
    graph, _ = check(alpha_blend(through_conv=False), "infer-shapes,fuse-alpha-blend,dce", feeds, target=ORT_CPU)
    assert ops(graph) == ["Relu", "Neg", "Mul", "Add"]
    # factors that do not sum to 1 are refused; other targets skip
    graph, log = check(alpha_blend(0.3, 0.6), "infer-shapes,fuse-alpha-blend,dce", feeds, target=ORT_CPU)
    assert log["fuse-alpha-blend"].stats == {"AlphaBlend": "0/1"} and "sum to 1" in log["fuse-alpha-blend"].details[0]["reason"]
    graph, log = check(alpha_blend(), "infer-shapes,fuse-alpha-blend,dce", feeds, target=TVM)
    assert len(ops(graph)) == 6 and "skipped" in log["fuse-alpha-blend"].stats["AlphaBlend"]

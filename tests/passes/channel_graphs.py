"""Small ONNX graphs, one per kind of channel coupling, for the channel analysis / fold / prune tests.

Each builder returns (model, feeds). Weights are seeded random numbers; names say what couples."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model

N, H, W = 2, 6, 6


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.value_info = []  # types ONNX shape inference cannot find (GroupNormalization in onnx 1.23)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape, hint: str = "w") -> str:
        return self.const((self.rng.standard_normal(shape) * 0.5).astype(np.float32), hint)

    def op(self, op_type: str, inputs, hint: str | None = None, n_out: int = 1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, pad: int | None = None,
             hint: str = "conv") -> str:
        pad = k // 2 if pad is None else pad
        ins = [x, self.weight(cout, cin // group, k, k, hint=hint + ".w")]
        if bias:
            ins.append(self.weight(cout, hint=hint + ".b"))
        return self.op("Conv", ins, hint, kernel_shape=[k, k], pads=[pad] * 4, group=group)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])], "silu")

    def groupnorm(self, x: str, c: int, groups: int, fused: bool) -> str:
        gamma = (1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32)
        beta = (0.1 * self.rng.standard_normal(c)).astype(np.float32)
        if fused:
            out = self.op("GroupNormalization", [x, self.const(gamma, "gn.scale"), self.const(beta, "gn.bias")], "gn",
                          num_groups=groups, epsilon=1e-5)
            self.value_info.append(vi(out, [N, c, H, W]))
            return out
        r = self.op("Reshape", [x, self.const(np.array([0, groups, -1], np.int64), "gn.shape")], "gn_reshape")
        inorm = self.op("InstanceNormalization", [r, self.const(np.ones(groups, np.float32)),
                                                  self.const(np.zeros(groups, np.float32))], "gn_inorm", epsilon=1e-5)
        back = self.op("Reshape", [inorm, self.op("Shape", [x])], "gn_back")
        mul = self.op("Mul", [back, self.const(gamma.reshape(c, 1, 1), "gn.gamma")])
        return self.op("Add", [mul, self.const(beta.reshape(c, 1, 1), "gn.beta")])

    def model(self, inputs, outputs, opset: int = 18):
        return make_model(self.nodes, inputs, outputs, self.inits, opset=opset, ir_version=10,
                          value_info=self.value_info)


def vi(name, shape):
    return helper.make_tensor_value_info(name, T.FLOAT, shape)


def resnet(fused_gn: bool = False, C: int = 16, C2: int = 24, G: int = 4, E: int = 8, seed: int = 0):
    """conv_in -> [GN -> SiLU -> conv1 (+ timestep Gemm, broadcast) -> GN -> SiLU -> conv2] + residual
    -> GN -> conv_out. Couples: the residual stream (conv_in, conv2) with GroupNorm groups; conv1 with
    the timestep projection Gemm and GroupNorm groups."""
    b = Builder(seed)
    h = b.conv("x", 3, C, hint="conv_in")
    t = b.op("Gemm", ["temb", b.weight(C2, E, hint="temb.w"), b.weight(C2, hint="temb.b")], "temb_proj", transB=1)
    t4 = b.op("Unsqueeze", [t, b.const(np.array([2, 3], np.int64))], "temb_4d")
    a = b.conv(b.silu(b.groupnorm(h, C, G, fused_gn)), C, C2, hint="conv1")
    a = b.op("Add", [a, t4], "add_temb")
    a = b.conv(b.silu(b.groupnorm(a, C2, G, fused_gn)), C2, C, hint="conv2")
    r = b.op("Add", [h, a], "residual")
    b.conv(b.silu(b.groupnorm(r, C, G, fused_gn)), C, 3, hint="conv_out")
    out = b.nodes[-1].output[0]
    b.nodes[-1].output[0] = "y"
    assert out
    model = b.model([vi("x", [N, 3, H, W]), vi("temb", [N, E])], [vi("y", [N, 3, H, W])], opset=21 if fused_gn else 18)
    rng = np.random.default_rng(seed + 1)
    feeds = {"x": rng.standard_normal((N, 3, H, W)).astype(np.float32),
             "temb": rng.standard_normal((N, E)).astype(np.float32)}
    return model, feeds


def concat_split(seed: int = 0):
    """Two convs concatenated on channels -> depthwise conv -> Split [5, 7] -> a conv each -> Add.
    Couples: concat offsets, depthwise in == out, split pieces, the two branch convs (Add)."""
    b = Builder(seed)
    a = b.conv("x", 4, 6, hint="conv_a")
    c = b.conv("x", 4, 6, hint="conv_b")
    cat = b.op("Concat", [a, c], "cat", axis=1)
    dw = b.conv(cat, 12, 12, group=12, hint="depthwise")
    s0, s1 = b.op("Split", [dw, b.const(np.array([5, 7], np.int64))], "split", n_out=2, axis=1)
    y0 = b.conv(s0, 5, 8, k=1, pad=0, hint="conv_s0")
    y1 = b.conv(s1, 7, 8, k=1, pad=0, hint="conv_s1")
    s = b.op("Add", [y0, y1], "sum")
    b.conv(b.op("Relu", [s]), 8, 2, hint="conv_out")
    b.nodes[-1].output[0] = "y"
    model = b.model([vi("x", [N, 4, H, W])], [vi("y", [N, 2, H, W])])
    return model, {"x": np.random.default_rng(seed + 1).standard_normal((N, 4, H, W)).astype(np.float32)}


def temporal(seed: int = 0, F: int = 3):
    """Spatial conv on [B*F, C, H, W] -> reshape to [B, F, C, H, W] -> transpose to [B, C, F, H, W] ->
    Conv3d over frames (kernel 3x1x1) -> back -> + skip. Couples through the frame reshapes."""
    b = Builder(seed)
    C = 8
    h = b.conv("x", 4, C, hint="spatial")
    v = b.op("Reshape", [h, b.const(np.array([-1, F, C, H, W], np.int64))], "to_frames")
    v = b.op("Transpose", [v], "frames_last", perm=[0, 2, 1, 3, 4])
    w3 = b.weight(C, C, 3, 1, 1, hint="temporal.w")
    tconv = b.op("Conv", [v, w3, b.weight(C, hint="temporal.b")], "temporal_conv", kernel_shape=[3, 1, 1],
                 pads=[1, 0, 0, 1, 0, 0])
    back = b.op("Transpose", [tconv], "frames_back", perm=[0, 2, 1, 3, 4])
    back = b.op("Reshape", [back, b.op("Shape", [h])], "from_frames")
    s = b.op("Add", [h, back], "skip")
    b.conv(s, C, 2, hint="conv_out")
    b.nodes[-1].output[0] = "y"
    model = b.model([vi("x", [N * F, 4, H, W])], [vi("y", [N * F, 2, H, W])])
    return model, {"x": np.random.default_rng(seed + 1).standard_normal((N * F, 4, H, W)).astype(np.float32)}


def transparent(seed: int = 0):
    """conv -> Resize x2 -> Pad (spatial) -> MaxPool -> AveragePool -> per-channel Mul -> conv: all
    channel-transparent, the Mul's [C,1,1] constant is sliced."""
    b = Builder(seed)
    C = 8
    h = b.conv("x", 3, C, hint="conv_a")
    r = b.op("Resize", [h, "", b.const(np.array([1, 1, 2, 2], np.float32))], "resize", mode="nearest")
    p = b.op("Pad", [r, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "pad")
    m = b.op("MaxPool", [p], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    a = b.op("AveragePool", [m], "avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    s = b.op("Mul", [a, b.const((1 + b.rng.standard_normal((C, 1, 1))).astype(np.float32), "scale")], "scale_mul")
    b.conv(s, C, 2, hint="conv_out")
    b.nodes[-1].output[0] = "y"
    model = b.model([vi("x", [N, 3, H, W])], [vi("y", [N, 2, H + 1, W + 1])])
    return model, {"x": np.random.default_rng(seed + 1).standard_normal((N, 3, H, W)).astype(np.float32)}


def attention(seed: int = 0, S: int = 5, C: int = 16, heads: int = 4, fused: bool = False):
    """LayerNorm -> q/k/v MatMul -> split heads (Reshape [B, S, H, D], Transpose) -> softmax(q k^T) v
    -> merge heads -> out MatMul + residual -> MatMul(GELU) MLP + residual. Couples: heads (whole),
    the residual stream through LayerNorm (lossy), the MLP hidden width."""
    b = Builder(seed)
    D = C // heads
    x = b.op("MatMul", ["x", b.weight(6, C, hint="embed.w")], "embed")
    ln = b.op("LayerNormalization", [x, b.const(np.ones(C, np.float32)), b.const(np.zeros(C, np.float32))], "ln", axis=-1)

    def proj(hint):
        return b.op("Add", [b.op("MatMul", [ln, b.weight(C, C, hint=hint + ".w")], hint), b.weight(C, hint=hint + ".b")])

    q, k, v = proj("to_q"), proj("to_k"), proj("to_v")
    if fused:
        o = b.op("Attention", [b.op("Identity", [q]), k, v], "attn", q_num_heads=heads, kv_num_heads=heads)
    else:
        shape = b.const(np.array([0, -1, heads, D], np.int64), "heads_shape")
        qh = b.op("Transpose", [b.op("Reshape", [q, shape], "q_split")], "q_heads", perm=[0, 2, 1, 3])
        kt = b.op("Transpose", [b.op("Reshape", [k, shape], "k_split")], "k_heads_t", perm=[0, 2, 3, 1])
        vh = b.op("Transpose", [b.op("Reshape", [v, shape], "v_split")], "v_heads", perm=[0, 2, 1, 3])
        scores = b.op("Mul", [b.op("MatMul", [qh, kt], "qk"), b.const(np.float32(D ** -0.5))], "scaled")
        o = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), vh], "pv")
        o = b.op("Transpose", [o], "merge_heads", perm=[0, 2, 1, 3])
        o = b.op("Reshape", [o, b.const(np.array([0, 0, C], np.int64))], "merge")
    o = b.op("Add", [b.op("MatMul", [o, b.weight(C, C, hint="to_out.w")], "to_out"), x], "residual1")
    hid = b.op("MatMul", [o, b.weight(C, 2 * C, hint="ff1.w")], "ff1")
    hid = b.op("Mul", [hid, b.op("Sigmoid", [hid])], "ff_act")
    y = b.op("Add", [b.op("MatMul", [hid, b.weight(2 * C, C, hint="ff2.w")], "ff2"), o], "residual2")
    b.op("MatMul", [y, b.weight(C, 6, hint="head.w")], "y")
    b.nodes[-1].output[0] = "y"
    model = b.model([vi("x", [N, S, 6])], [vi("y", [N, S, 6])], opset=23 if fused else 18)
    return model, {"x": np.random.default_rng(seed + 1).standard_normal((N, S, 6)).astype(np.float32)}


def refusals(seed: int = 0):
    """conv_a -> Hardmax over channels (not in the table) -> conv; conv_b -> Reshape whose channel
    size is computed from a data-dependent value -> ...; conv_c -> graph output."""
    b = Builder(seed)
    a = b.conv("x", 3, 4, hint="conv_a")
    hm = b.op("Hardmax", [a], "hardmax", axis=1)
    y1 = b.conv(hm, 4, 2, hint="after_hardmax")
    c = b.conv("x", 3, 4, hint="conv_b")
    # the channel size is computed from the input's channel count (3 + 1): equal to 4 in this run,
    # but nothing ties it to conv_b's channels
    n = b.op("Slice", [b.op("Shape", ["x"]), b.const(np.array([1], np.int64)), b.const(np.array([2], np.int64))])
    tgt = b.op("Concat", [b.const(np.array([0], np.int64)), b.op("Add", [n, b.const(np.array([1], np.int64))]),
                          b.const(np.array([-1], np.int64))], axis=0)
    r = b.op("Reshape", [c, tgt], "computed_reshape")
    back = b.op("Reshape", [r, b.op("Shape", [c])], "back")
    y2 = b.conv(back, 4, 2, hint="after_reshape")
    b.op("Add", [y1, y2], "y")
    b.nodes[-1].output[0] = "y"
    c_out = b.conv("x", 3, 5, hint="conv_c")
    model = b.model([vi("x", [N, 3, H, W])], [vi("y", [N, 2, H, W]), vi(c_out, [N, 5, H, W])])
    return model, {"x": np.random.default_rng(seed + 1).standard_normal((N, 3, H, W)).astype(np.float32)}


GRAPHS = {
    "resnet": resnet,
    "resnet_fused_gn": lambda: resnet(fused_gn=True),
    "concat_split": concat_split,
    "temporal": temporal,
    "transparent": transparent,
    "attention": attention,
    "attention_fused": lambda: attention(fused=True),
}

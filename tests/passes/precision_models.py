"""Small hand-made models for the precision tests: the pieces of a video UNet / DiT block that
reduced precision breaks (timestep sin/cos, decomposed norms, softmax, large activations)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper


def unet_block(*, opset: int = 17, scale: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """x[2,16,8,8], t[2] -> timestep embedding (sin/cos), conv, GroupNorm written out (ReduceMean,
    Sub, Pow, Sqrt, Div), SiLU, conv, attention over the 64 pixels with a LayerNormalization and a
    Softmax, residual. `scale` multiplies the second conv's weights (large activations)."""
    rng = np.random.default_rng(seed)
    C, G = 16, 4

    def w(name, *shape, s=None):
        s = s if s is not None else 1.0 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1)
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    def c(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    half = 8
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)
    inits = [
        c("freqs", freqs[None, :]), c("axes0", [1], np.int64),
        w("Wt1", 2 * half, 32), w("Wt2", 32, C),
        w("conv1_w", C, C, 3, 3), c("conv1_b", np.zeros(C)),
        c("gn_shape", [2, G, -1], np.int64), c("x_shape", [2, C, 8, 8], np.int64), c("red_axes", [-1], np.int64),
        c("two", 2.0), c("eps", 1e-5), c("gamma", rng.standard_normal((1, C, 1, 1)) * 0.1 + 1),
        c("beta", rng.standard_normal((1, C, 1, 1)) * 0.1),
        w("conv2_w", C, C, 3, 3, s=scale / np.sqrt(C * 9)), c("conv2_b", np.zeros(C)),
        c("temb_shape", [2, C, 1, 1], np.int64), c("tok_shape", [2, C, 64], np.int64),
        c("ln_s", np.ones(C)), c("ln_b", np.zeros(C)),
        w("Wq", C, C), w("Wk", C, C), w("Wv", C, C), w("Wo", C, C), c("attn_scale", 1 / np.sqrt(C)),
    ]
    if opset < 18:
        rm = lambda i, o, n: helper.make_node("ReduceMean", [i], [o], name=n, axes=[-1], keepdims=1)
    else:
        rm = lambda i, o, n: helper.make_node("ReduceMean", [i, "red_axes"], [o], name=n, keepdims=1)
    nodes = [
        # timestep embedding
        helper.make_node("Unsqueeze", ["t", "axes0"], ["t1"], name="temb/unsqueeze"),
        helper.make_node("Mul", ["t1", "freqs"], ["targ"], name="temb/mul"),
        helper.make_node("Sin", ["targ"], ["tsin"], name="temb/sin"),
        helper.make_node("Cos", ["targ"], ["tcos"], name="temb/cos"),
        helper.make_node("Concat", ["tsin", "tcos"], ["temb0"], name="temb/concat", axis=1),
        helper.make_node("MatMul", ["temb0", "Wt1"], ["temb1"], name="temb/linear1"),
        helper.make_node("Sigmoid", ["temb1"], ["temb1s"], name="temb/sig"),
        helper.make_node("Mul", ["temb1", "temb1s"], ["temb2"], name="temb/silu"),
        helper.make_node("MatMul", ["temb2", "Wt2"], ["temb3"], name="temb/linear2"),
        helper.make_node("Reshape", ["temb3", "temb_shape"], ["temb"], name="temb/reshape"),
        # conv, decomposed group norm, SiLU, conv, + temb
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["h1", "gn_shape"], ["g0"], name="gn/reshape"),
        rm("g0", "mean", "gn/mean"),
        helper.make_node("Sub", ["g0", "mean"], ["cent"], name="gn/sub"),
        helper.make_node("Pow", ["cent", "two"], ["sq"], name="gn/pow"),
        rm("sq", "var", "gn/var"),
        helper.make_node("Add", ["var", "eps"], ["vare"], name="gn/add_eps"),
        helper.make_node("Sqrt", ["vare"], ["std"], name="gn/sqrt"),
        helper.make_node("Div", ["cent", "std"], ["normed"], name="gn/div"),
        helper.make_node("Reshape", ["normed", "x_shape"], ["g1"], name="gn/reshape_back"),
        helper.make_node("Mul", ["g1", "gamma"], ["g2"], name="gn/scale"),
        helper.make_node("Add", ["g2", "beta"], ["g3"], name="gn/shift"),
        helper.make_node("Sigmoid", ["g3"], ["g3s"], name="act/sig"),
        helper.make_node("Mul", ["g3", "g3s"], ["g4"], name="act/silu"),
        helper.make_node("Conv", ["g4", "conv2_w", "conv2_b"], ["h2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h2", "temb"], ["h3"], name="add_temb"),
        # attention over pixels
        helper.make_node("Reshape", ["h3", "tok_shape"], ["tok0"], name="attn/reshape"),
        helper.make_node("Transpose", ["tok0"], ["tok"], name="attn/transpose", perm=[0, 2, 1]),
        helper.make_node("LayerNormalization", ["tok", "ln_s", "ln_b"], ["ln"], name="attn/norm", axis=-1,
                         epsilon=1e-5),
        helper.make_node("MatMul", ["ln", "Wq"], ["q"], name="attn/q"),
        helper.make_node("MatMul", ["ln", "Wk"], ["k"], name="attn/k"),
        helper.make_node("MatMul", ["ln", "Wv"], ["v"], name="attn/v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="attn/kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="attn/qk"),
        helper.make_node("Mul", ["qk", "attn_scale"], ["qks"], name="attn/scale"),
        helper.make_node("Softmax", ["qks"], ["p"], name="attn/softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"], name="attn/pv"),
        helper.make_node("MatMul", ["o", "Wo"], ["o2"], name="attn/out"),
        helper.make_node("Add", ["o2", "tok"], ["y"], name="attn/residual"),
    ]
    graph = helper.make_graph(nodes, "unet_block",
                              [helper.make_tensor_value_info("x", T.FLOAT, [2, C, 8, 8]),
                               helper.make_tensor_value_info("t", T.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 64, C])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32),
            "t": np.array([999.0, 17.0], np.float32)}

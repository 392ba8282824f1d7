"""Small hand-built graphs with the router structures of Wan2.2 (If / Where on `t >= boundary*1000`),
a timestep-embedding top-k router and a token-level top-k router."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

D = 8  # hidden size
E = 4  # experts
TOKENS = 6


def _w(rng, name, *shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "moe", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _io():
    return ([helper.make_tensor_value_info("hidden_states", T.FLOAT, [1, TOKENS, D]),
             helper.make_tensor_value_info("timestep", T.INT64, [1])],
            [helper.make_tensor_value_info("out", T.FLOAT, [1, TOKENS, D])])


def _temb(rng):
    """timestep -> [1, D] sinusoidal embedding -> Linear: the part every expert shares."""
    freqs = numpy_helper.from_array(np.exp(-np.arange(D) / D).astype(np.float32).reshape(1, D), "freqs")
    nodes = [helper.make_node("Cast", ["timestep"], ["t_f"], to=T.FLOAT, name="t_cast"),
             helper.make_node("Unsqueeze", ["t_f", "ax1"], ["t_col"], name="t_col"),
             helper.make_node("Mul", ["t_col", "freqs"], ["t_arg"], name="t_arg"),
             helper.make_node("Sin", ["t_arg"], ["t_sin"], name="t_sin"),
             helper.make_node("MatMul", ["t_sin", "W_t"], ["temb"], name="t_proj")]
    inits = [freqs, _w(rng, "W_t", D, D), numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    return nodes, inits


def _expert(rng, i, x, out, prefix=""):
    """A two-layer MLP expert; its weights are the bulk of the model."""
    nodes = [helper.make_node("MatMul", [x, f"{prefix}W1_{i}"], [f"{prefix}h_{i}"], name=f"{prefix}e{i}_fc1"),
             helper.make_node("Relu", [f"{prefix}h_{i}"], [f"{prefix}a_{i}"], name=f"{prefix}e{i}_act"),
             helper.make_node("MatMul", [f"{prefix}a_{i}", f"{prefix}W2_{i}"], [out], name=f"{prefix}e{i}_fc2")]
    return nodes, [_w(rng, f"{prefix}W1_{i}", D, 4 * D), _w(rng, f"{prefix}W2_{i}", 4 * D, D)]


def _condition(boundary=0.875):
    """cond = timestep >= boundary*1000, a bool scalar."""
    b = numpy_helper.from_array(np.array(boundary * 1000, np.float32), "boundary_t")
    return [helper.make_node("GreaterOrEqual", ["t_f", "boundary_t"], ["is_high_v"], name="router_cmp"),
            helper.make_node("Squeeze", ["is_high_v"], ["is_high"], name="router_squeeze")], [b]


def wan22_if(seed=0, branch_initializers=False):
    """Wan2.2-style switch as an If: then = high-noise expert, else = low-noise expert."""
    rng = np.random.default_rng(seed)
    inputs, outputs = _io()
    nodes, inits = _temb(rng)
    cn, ci = _condition()
    nodes += cn
    inits += ci
    nodes.append(helper.make_node("Unsqueeze", ["temb", "ax1"], ["temb3"], name="temb3"))
    nodes.append(helper.make_node("Add", ["hidden_states", "temb3"], ["x"], name="add_temb"))
    branches = []
    for i in (0, 1):
        bn, bi = _expert(rng, i, "x", f"y_{i}")
        if branch_initializers:
            branches.append(helper.make_graph(bn, f"expert_{i}", [], [helper.make_tensor_value_info(f"y_{i}", T.FLOAT, None)], bi))
        else:
            branches.append(helper.make_graph(bn, f"expert_{i}", [], [helper.make_tensor_value_info(f"y_{i}", T.FLOAT, None)]))
            inits += bi
    nodes.append(helper.make_node("If", ["is_high"], ["moe_out"], name="expert_switch",
                                  then_branch=branches[0], else_branch=branches[1]))
    nodes.append(helper.make_node("Add", ["moe_out", "x"], ["out"], name="residual"))
    return _model(nodes, inputs, outputs, inits)


def wan22_where(seed=0):
    """Wan2.2-style switch as a Where over both experts' outputs (both computed)."""
    rng = np.random.default_rng(seed)
    inputs, outputs = _io()
    nodes, inits = _temb(rng)
    cn, ci = _condition()
    nodes += cn
    inits += ci
    nodes.append(helper.make_node("Unsqueeze", ["temb", "ax1"], ["temb3"], name="temb3"))
    nodes.append(helper.make_node("Add", ["hidden_states", "temb3"], ["x"], name="add_temb"))
    for i in (0, 1):
        bn, bi = _expert(rng, i, "x", f"y_{i}")
        nodes += bn
        inits += bi
    inits.append(numpy_helper.from_array(np.array([1, 1, 1], np.int64), "cond_shape"))
    nodes.append(helper.make_node("Reshape", ["is_high_v", "cond_shape"], ["cond3"], name="router_reshape"))
    nodes.append(helper.make_node("Where", ["cond3", "y_0", "y_1"], ["out"], name="expert_select"))
    return _model(nodes, inputs, outputs, inits)


def _topk_moe(rng, router_input, nodes, inits, k):
    """Router Linear -> Softmax -> TopK; experts stacked on axis 1; GatherElements at the indices;
    gate-weighted sum over k. router_input: [1, R, D] (R = 1 for a timestep router, TOKENS for tokens)."""
    nodes += [helper.make_node("MatMul", [router_input, "W_router"], ["logits"], name="router_fc"),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="router_softmax"),
              helper.make_node("TopK", ["probs", "k"], ["gate", "idx"], axis=-1, name="router_topk")]
    inits += [_w(rng, "W_router", D, E), numpy_helper.from_array(np.array([k], np.int64), "k")]
    for i in range(E):
        bn, bi = _expert(rng, i, "hidden_states", f"y_{i}")
        nodes += bn
        inits += bi
        nodes.append(helper.make_node("Unsqueeze", [f"y_{i}", "ax2"], [f"ys_{i}"], name=f"stack_{i}"))
    inits += [numpy_helper.from_array(np.array([2], np.int64), "ax2"),
              numpy_helper.from_array(np.array([-1], np.int64), "axm1"),
              numpy_helper.from_array(np.array([1, TOKENS, k, D], np.int64), "gshape")]
    nodes += [helper.make_node("Concat", [f"ys_{i}" for i in range(E)], ["stacked"], axis=2, name="stack"),  # [1,T,E,D]
              helper.make_node("Unsqueeze", ["idx", "axm1"], ["idx4"], name="idx4"),  # [1,R,k,1]
              helper.make_node("Expand", ["idx4", "gshape"], ["idx_e"], name="idx_expand"),  # [1,T,k,D]
              helper.make_node("GatherElements", ["stacked", "idx_e"], ["picked"], axis=2, name="dispatch"),
              helper.make_node("Unsqueeze", ["gate", "axm1"], ["gate4"], name="gate4"),
              helper.make_node("Mul", ["picked", "gate4"], ["weighted"], name="weigh"),
              helper.make_node("ReduceSum", ["weighted", "ax2"], ["out"], keepdims=0, name="combine")]


def moe_timestep_router(seed=0, k=1):
    """DiT-style MoE whose router reads only the timestep embedding (precomputable)."""
    rng = np.random.default_rng(seed)
    inputs, outputs = _io()
    nodes, inits = _temb(rng)
    nodes.append(helper.make_node("Unsqueeze", ["temb", "ax1"], ["temb3"], name="temb3"))  # [1,1,D]
    _topk_moe(rng, "temb3", nodes, inits, k)
    return _model(nodes, inputs, outputs, inits)


def moe_token_router(seed=0, k=2):
    """Token-level top-k MoE: the router reads hidden_states, so it cannot be precomputed."""
    rng = np.random.default_rng(seed)
    inputs, outputs = _io()
    nodes, inits = _temb(rng)
    nodes.append(helper.make_node("Unsqueeze", ["temb", "ax1"], ["temb3"], name="temb3"))
    nodes.append(helper.make_node("Add", ["hidden_states", "temb3"], ["x_router"], name="router_in"))
    _topk_moe(rng, "x_router", nodes, inits, k)
    return _model(nodes, inputs, outputs, inits)


def feeds(t, seed=1):
    rng = np.random.default_rng(seed)
    return {"hidden_states": rng.standard_normal((1, TOKENS, D)).astype(np.float32),
            "timestep": np.array([t], np.int64)}


def moe_sparse_dispatch(seed=0, k=2, router="timestep"):
    """torch-style sparse dispatch, as the zoo's moe-dit exports it: per expert e,
    NonZero(Equal(chosen, e)) -> Gather tokens -> expert -> ScatterElements into zeros -> Add.
    hidden_states [1, TOKENS, D] is handled as TOKENS rows; the token count stays dynamic."""
    rng = np.random.default_rng(seed)
    inputs, outputs = _io()
    nodes, inits = _temb(rng)
    inits += [_w(rng, "W_router", D, E), numpy_helper.from_array(np.array([k], np.int64), "k"),
              numpy_helper.from_array(np.array([-1, D], np.int64), "rows_shape"),
              numpy_helper.from_array(np.array([-1, k], np.int64), "chosen_shape"),
              numpy_helper.from_array(np.array([0], np.int64), "ax0"),
              numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes.append(helper.make_node("Reshape", ["hidden_states", "rows_shape"], ["rows"], name="rows"))  # [T, D]
    router_in = "temb" if router == "timestep" else "rows"
    nodes += [helper.make_node("MatMul", [router_in, "W_router"], ["logits"], name="router_fc"),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="router_softmax"),
              helper.make_node("TopK", ["probs", "k"], ["gate", "idx"], axis=-1, name="router_topk"),
              helper.make_node("Shape", ["rows"], ["rows_dims"], name="rows_dims"),
              helper.make_node("Gather", ["rows_dims", "ax0"], ["n_rows"], axis=0, name="n_rows"),
              helper.make_node("Concat", ["n_rows", "k"], ["chosen_dims"], axis=0, name="chosen_dims"),
              helper.make_node("Expand", ["idx", "chosen_dims"], ["chosen"], name="chosen"),  # [T, k]
              helper.make_node("Expand", ["gate", "chosen_dims"], ["weights"], name="weights"),
              helper.make_node("ConstantOfShape", ["rows_dims"], ["acc_0"], name="zeros",
                               value=numpy_helper.from_array(np.array([0.0], np.float32)))]
    for e in range(E):
        inits.append(numpy_helper.from_array(np.array(e, np.int64), f"e{e}"))
        bn, bi = _expert(rng, e, f"tok_x_{e}", f"y_{e}")
        inits += bi
        nodes += [helper.make_node("Equal", ["chosen", f"e{e}"], [f"mask_{e}"], name=f"mask_{e}"),
                  helper.make_node("NonZero", [f"mask_{e}"], [f"nz_{e}"], name=f"nz_{e}"),  # [2, n]
                  helper.make_node("Gather", [f"nz_{e}", "zero"], [f"tok_{e}"], axis=0, name=f"tok_{e}"),
                  helper.make_node("Transpose", [f"nz_{e}"], [f"nzt_{e}"], perm=[1, 0], name=f"nzt_{e}"),
                  helper.make_node("Gather", ["rows", f"tok_{e}"], [f"tok_x_{e}"], axis=0, name=f"tok_x_{e}"),
                  *bn,
                  helper.make_node("GatherND", ["weights", f"nzt_{e}"], [f"w_{e}"], name=f"w_{e}"),
                  helper.make_node("Unsqueeze", [f"w_{e}", "ax1"], [f"w2_{e}"], name=f"w2_{e}"),
                  helper.make_node("Mul", [f"y_{e}", f"w2_{e}"], [f"upd_{e}"], name=f"upd_{e}"),
                  helper.make_node("Unsqueeze", [f"tok_{e}", "ax1"], [f"tcol_{e}"], name=f"tcol_{e}"),
                  helper.make_node("Shape", [f"upd_{e}"], [f"upd_dims_{e}"], name=f"upd_dims_{e}"),
                  helper.make_node("Expand", [f"tcol_{e}", f"upd_dims_{e}"], [f"sidx_{e}"], name=f"sidx_{e}"),
                  helper.make_node("Shape", [f"acc_{e}"], [f"acc_dims_{e}"], name=f"acc_dims_{e}"),
                  helper.make_node("ConstantOfShape", [f"acc_dims_{e}"], [f"z_{e}"], name=f"z_{e}",
                                   value=numpy_helper.from_array(np.array([0.0], np.float32))),
                  helper.make_node("ScatterElements", [f"z_{e}", f"sidx_{e}", f"upd_{e}"], [f"contrib_{e}"],
                                   axis=0, name=f"scatter_{e}"),
                  helper.make_node("Add", [f"acc_{e}", f"contrib_{e}"], [f"acc_{e + 1}"], name=f"acc_{e + 1}")]
    inits.append(numpy_helper.from_array(np.array([1, TOKENS, D], np.int64), "out_shape"))
    nodes.append(helper.make_node("Reshape", [f"acc_{E}", "out_shape"], ["out"], name="unrows"))
    return _model(nodes, inputs, outputs, inits)

"""The transformer blocks' residual Adds, with the bias of the projection before them, into ORT CUDA's
com.microsoft SkipLayerNormalization and BiasAdd."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from vidcc.ir import Graph, Node, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Outcome, emit, ensure_opset, remove_dead

from ._fusion import MS, accepts, per_axis
from .fusion_residual import _skip as _skip_layernorm_skipped

FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
# ORT's CUDA BiasAdd refuses every other channel count (contrib_ops/cuda/diffusion/bias_add.cc)
BIAS_ADD_CHANNELS = (320, 640, 1280)


@dataclass(frozen=True)
class FuseSkipBias(Pass):
    """Residual Adds of the transformer blocks, and the bias Add of the projection before them, into one
    kernel each (ORT's CUDA EP). The projection then stays a bias-free MatMul: ORT no longer turns
    MatMul + Add into a Gemm that first copies the bias into its output (svd-unet:full, H100: 17.7 ms of
    bias broadcasts, 18.4 ms of element-wise Adds/Muls and 8.5 ms of LayerNorm in a 197 ms run).

    Rewrite cases (targets that accept the com.microsoft op; run after fuse-layernorm and
    fuse-single-key-attention):
    - LayerNormalization(s) over the last axis of a 2-D or 3-D s, s a sum of Adds (each inner Add read
      only by the sum): the sum's terms are collected; per-channel constants (the projections' biases)
      add up to the kernel's `bias`; two terms of s's shape become `input` and `skip` (`input` a MatMul's
      output where there is one); the remaining terms (SVD's cross-attention over one key adds a
      [B, 1, C] row) are added to `skip` first -> com.microsoft SkipLayerNormalization(input, skip,
      gamma, beta, bias), whose 4th output (input + skip + bias) serves the sum's other readers;
    - Add(Add(MatMul(...), bias), skip) with no LayerNormalization taking it: 3-D, skip of the MatMul
      output's shape, a per-channel constant bias, 320, 640 or 1280 channels -> com.microsoft
      BiasAdd(MatMul(...), bias, skip).
    Refused with the reason: a LayerNormalization reading a sum with fewer than two terms of its
    input's shape (SVD's norm1 reads proj_in(x) + bias: there is no residual to add), whose Mean/InvStdDev
    outputs are read (the CUDA kernel does not write them), over another axis, of another rank, or with
    gamma/beta not 1-D [C] (contrib_ops/cpu/skip_layer_norm_helper.h); a BiasAdd over other channel
    counts, ranks, or with a broadcast skip (contrib_ops/cuda/diffusion/bias_add.cc); unknown shapes.
    SkipLayerNormalization is skipped on ORT CPU unless `force` (measured slower there, see
    fuse-skip-layernorm); ORT CPU has no BiasAdd. The kernels take float and float16 only, all inputs
    and outputs of one type (materialize-precision types them so). The CUDA SkipLayerNormalization keeps
    its statistics in the input type unless the EP runs it in strict mode (the ort-cuda targets set
    enable_skip_layer_norm_strict_mode: float statistics, as LayerNormalization-17's stash_type).
    Equal to the original up to float rounding (the sum is added up in another order).
    """

    name = "fuse-skip-bias"
    force: bool = False  # SkipLayerNormalization on ORT CPU too, where it measured slower

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        out, stats = Outcome(), {}
        skipped_ln = _skip_layernorm_skipped(ctx, self.force)
        if skipped_ln:
            stats["SkipLayerNorm"] = skipped_ln if "skipped" in skipped_ln else f"skipped: {skipped_ln}"
        else:
            counts = {"bias": 0, "sum output": 0}
            for ln in graph.nodes_by_op("LayerNormalization", ""):
                if ln.id in graph.nx:
                    _skip_layernorm(graph, ln, out, counts)
            if out.fused.get("SkipLayerNorm"):
                stats["SkipLayerNorm with bias"] = counts["bias"]
                stats["SkipLayerNorm with sum output"] = counts["sum output"]
        if accepts(ctx, "BiasAdd", MS):
            for add in graph.nodes_by_op("Add", ""):
                if add.id in graph.nx:
                    _bias_add(graph, add, out)
        else:
            stats["BiasAdd"] = "skipped: target has no com.microsoft BiasAdd"
        return PassResult(out.modified, {**out.stats(), **stats}, out.details)


# ---- residual Add + LayerNormalization -> SkipLayerNormalization ---------------------------------------
def _skip_layernorm(g: Graph, ln: Node, out: Outcome, counts: dict) -> None:
    root = g.producer(ln.inputs[0])
    if root is None or root.op_type != "Add" or root.domain not in ("", "ai.onnx"):
        return
    out.candidates["SkipLayerNorm"] = out.candidates.get("SkipLayerNorm", 0) + 1
    plan = _sln_plan(g, ln, root)
    if isinstance(plan, str):
        out.details.append({"kind": "refused", "pattern": "SkipLayerNorm", "node": ln.name or ln.outputs[0],
                            "reason": plan})
        return
    form = _sln_rewrite(g, ln, root, *plan)
    counts["bias"] += plan[2] is not None
    counts["sum output"] += "sum output" in form
    out.fused["SkipLayerNorm"] = out.fused.get("SkipLayerNorm", 0) + 1
    out.details.append({"kind": "fused", "pattern": "SkipLayerNorm", "node": ln.name or ln.outputs[0], "form": form})


def _sln_plan(g: Graph, ln: Node, root: Node):
    """(input, skip, bias [C] or None, terms added to skip first, the sum's Adds) or why not."""
    s = ln.inputs[0]
    t = g.type_of(s)
    shape = t.shape
    if shape is None or any(d is None for d in shape):
        return f"the LayerNormalization's input has an unknown shape {shape}"
    rank = len(shape)
    if ln.attr("axis", -1) % max(rank, 1) != rank - 1:
        return f"normalizes from axis {ln.attr('axis')}, not over the last axis only"
    if rank not in (2, 3):
        return f"{rank}-D input: the kernel takes 2-D or 3-D inputs"
    if t.dtype not in FLOATS:
        return f"input type {TensorProto.DataType.Name(t.dtype)}: the kernel takes float and float16 only"
    if any(o and g.is_used(o) for o in ln.outputs[1:]):
        return "its Mean/InvStdDev outputs are read (the CUDA kernel does not write them)"
    channels = shape[-1]
    for i, what in ((1, "gamma"), (2, "beta")):
        if i < len(ln.inputs) and ln.inputs[i]:
            ps = g.type_of(ln.inputs[i]).shape
            if ps is None or tuple(ps) != (channels,):
                return f"{what} has the shape {ps}, not [{channels}]"
    terms, adds = _terms(g, root, tuple(shape))
    biases, full, other = [], [], []
    for term in terms:
        c = g.constant(term)
        vec = per_axis(c, rank, -1, channels) if c is not None and isinstance(channels, int) else None
        if vec is not None and np.issubdtype(vec.dtype, np.floating):
            biases.append(vec)
        elif tuple(g.type_of(term).shape or ()) == tuple(shape) and c is None:
            full.append(term)
        else:
            other.append(term)
    if len(full) < 2:
        parts = [f"{len(full)} term(s) of the input's shape {list(shape)}"]
        parts += [f"broadcast term(s) {', '.join(str(list(g.type_of(x).shape or ())) for x in other)}"] if other else []
        parts += ["a per-channel constant (a projection's bias)"] if biases else []
        alone = ", no residual" if len(full) == 1 and not other else ""
        return (f"the sum it normalizes has {' and '.join(parts)}{alone}: "
                "SkipLayerNormalization needs an input and a skip of the input's shape")
    # input: a projection (its bias moves into the kernel, so it stays a MatMul); skip: the residual,
    # which takes the other terms first
    rest = list(full)
    inp = next((x for x in rest if _is_matmul(g, x)), rest[0])
    rest.remove(inp)
    skip = next((x for x in rest if not _is_matmul(g, x)), rest[0])
    rest.remove(skip)
    bias = None
    if biases:
        bias = np.sum([b.astype(np.float64) for b in biases], axis=0).astype(helper.tensor_dtype_to_np_dtype(t.dtype))
    return inp, skip, bias, rest + other, adds


def _terms(g: Graph, root: Node, shape: tuple) -> tuple[list[str], list[Node]]:
    """The terms of the sum `root` computes, through the Adds only the sum reads: a full-size Add always,
    a smaller (broadcast) one only to take a per-channel constant out of it (two broadcast terms added
    to a full-size tensor one by one would cost a full-size pass more)."""
    terms, adds = [], [root]

    def per_channel(t: str) -> bool:
        c = g.constant(t)
        return c is not None and isinstance(shape[-1], int) and per_axis(c, len(shape), -1, shape[-1]) is not None

    def expand(t: str) -> None:
        p = g.producer(t)
        if p is not None and p.op_type == "Add" and p.domain in ("", "ai.onnx") and len(p.inputs) == 2 \
                and t not in g.outputs and len(g.consumers(t)) == 1 and \
                (tuple(g.type_of(t).shape or ()) == shape or any(per_channel(i) for i in p.inputs)):
            adds.append(p)
            for i in p.inputs:
                expand(i)
        else:
            terms.append(t)

    for i in root.inputs:
        expand(i)
    return terms, adds


def _is_matmul(g: Graph, t: str) -> bool:
    p = g.producer(t)
    return p is not None and p.op_type == "MatMul" and p.domain in ("", "ai.onnx")


def _sln_rewrite(g: Graph, ln: Node, root: Node, inp: str, skip: str, bias, extra: list[str], adds: list[Node]) -> str:
    s = root.outputs[0]
    t = g.type_of(s)
    stem = ln.name or "skiplayernorm"
    for term in extra:  # the broadcast terms go into the skip first
        skip = emit(g, "Add", [skip, term], like=root, suffix="skip", types=[t]).outputs[0]
    beta = ln.inputs[2] if len(ln.inputs) > 2 and ln.inputs[2] else ""
    inputs = [inp, skip, ln.inputs[1], beta]
    if bias is not None:
        inputs.append(g.add_constant(bias, f"{stem}.skip_bias"))
    readers = [n for n in g.consumer_nodes(s) if n is not ln]
    with_sum = bool(readers) or s in g.outputs
    y = g.unique_name(f"{ln.outputs[0]}_skip")
    outputs = [y, "", "", g.unique_name(f"{s}_sum")] if with_sum else [y]
    types = [g.type_of(ln.outputs[0]), None, None, t] if with_sum else [g.type_of(ln.outputs[0])]
    node = emit(g, "SkipLayerNormalization", inputs if beta or bias is not None else inputs[:3], like=ln,
                domain=MS, suffix="SkipLayerNormalization", attrs={"epsilon": float(ln.attr("epsilon", 1e-5))},
                outputs=outputs, types=types)
    ensure_opset(g, MS, 1)
    g.replace_all_uses(ln.outputs[0], y)
    g.remove_node(ln)
    if with_sum:
        g.replace_all_uses(s, node.outputs[3])
    remove_dead(g, adds)
    form = "residual" + (f" + {len(extra)} broadcast term(s) into the skip" if extra else "")
    return form + (" + bias" if bias is not None else "") + (" + sum output" if with_sum else "")


# ---- MatMul + bias Add + residual Add -> BiasAdd -------------------------------------------------------
def _bias_add(g: Graph, add: Node, out: Outcome) -> None:
    found = _biased_projection(g, add)
    if found is None:
        return
    out.candidates["BiasAdd"] = out.candidates.get("BiasAdd", 0) + 1
    biased, x, skip, bias = found
    why = _bias_add_refusal(g, add, x, skip, bias)
    if why:
        out.details.append({"kind": "refused", "pattern": "BiasAdd", "node": add.name or add.outputs[0], "reason": why})
        return
    shape = g.type_of(x).shape
    vec = per_axis(g.constant(bias), 3, -1, shape[-1])
    b = bias if g.constant(bias).shape == (shape[-1],) else g.add_constant(vec, f"{biased.name or 'bias_add'}.bias")
    node = emit(g, "BiasAdd", [x, b, skip], like=add, domain=MS, suffix="BiasAdd", types=[g.type_of(add.outputs[0])])
    ensure_opset(g, MS, 1)
    g.replace_all_uses(add.outputs[0], node.outputs[0])
    remove_dead(g, [add, biased])
    out.fused["BiasAdd"] = out.fused.get("BiasAdd", 0) + 1
    out.details.append({"kind": "fused", "pattern": "BiasAdd", "node": add.name or add.outputs[0],
                        "form": "MatMul + bias + residual"})


def _biased_projection(g: Graph, add: Node):
    """(the bias Add, the MatMul's output, the residual, the bias constant) when `add` is
    Add(Add(MatMul(...), constant), residual) in any operand order, the bias Add read only by `add`."""
    if len(add.inputs) != 2:
        return None
    for k in (0, 1):
        p = g.producer(add.inputs[k])
        if p is None or p.op_type != "Add" or p.domain not in ("", "ai.onnx") or len(p.inputs) != 2 \
                or g.consumer_nodes(add.inputs[k]) != [add] or add.inputs[k] in g.outputs:
            continue
        for j in (0, 1):
            if g.is_constant(p.inputs[j]) and _is_matmul(g, p.inputs[1 - j]):
                return p, p.inputs[1 - j], add.inputs[1 - k], p.inputs[j]
    return None


def _bias_add_refusal(g: Graph, add: Node, x: str, skip: str, bias: str) -> str | None:
    xt, st = g.type_of(x), g.type_of(skip)
    xs, ss, os_ = xt.shape, st.shape, g.type_of(add.outputs[0]).shape
    if xs is None or any(d is None for d in xs):
        return f"the projection's shape {xs} is not known"
    if len(xs) != 3:
        return f"{len(xs)}-D: ORT's CUDA BiasAdd takes [N, S, C] only"
    if ss is None or tuple(ss) != tuple(xs) or tuple(os_ or ()) != tuple(xs):
        return f"the residual {ss} is not of the projection's shape {list(xs)}: BiasAdd's skip does not broadcast"
    if xt.dtype not in FLOATS or st.dtype != xt.dtype:
        return "not float or float16 throughout: the kernel takes one of the two"
    if xs[-1] not in BIAS_ADD_CHANNELS:
        return f"{xs[-1]} channels: ORT's CUDA BiasAdd takes {', '.join(map(str, BIAS_ADD_CHANNELS))} only"
    c = g.constant(bias)
    vec = per_axis(c, 3, -1, xs[-1])
    if vec is None or not np.issubdtype(c.dtype, np.floating):
        return f"the constant {c.shape} added to the projection is not a per-channel bias"
    return None


PASSES = [FuseSkipBias]

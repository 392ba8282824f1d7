"""Linear-layer fusions: QKV projection packing, MatMul+Add -> Gemm, Conv+BatchNormalization folding,
temporal Conv3d as Conv2d, nearest 2x upsampling + 3x3 Conv as four 2x2 phase Convs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, Outcome, P, Rule, Var, apply_rules, emit

from ._fusion import accepts, ort_cpu, static


@dataclass(frozen=True)
class PackProjections(Pass):
    """Pack the projections that read one tensor into one MatMul (QKV packing).

    Rewrite cases:
    - MatMul(x, W1), ..., MatMul(x, Wn) with constant 2-D weights of one dtype and input size
      (q/k/v of self-attention, k/v of cross-attention, GEGLU halves...): one MatMul(x, [W1|...|Wn])
      followed by Split(axis=-1) into the n outputs;
    - when every one of them is followed by Add(constant bias over the last axis) that is its only
      reader, the biases are packed too (one Add before the Split);
    - `min_group` readers at least (default 2); x of rank >= 2.
    Skipped on ORT CPU unless `force`: its MultiHeadAttention takes no packed QKV on CPU, and one
    MatMul + Split measured slower than the separate MatMuls (1.48 vs 1.12 ms for [4096,64]x3,
    13.7 vs 8.5 ms for [4096,128]x3, one thread); there unpack-projections does the opposite.
    """

    name = "fuse-qkv"
    min_group: int = 2
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.force and ort_cpu(ctx):
            return PassResult(False, {"QKV": "skipped: separate MatMuls run faster than MatMul + Split on ORT CPU"})
        out = Outcome()
        seen: set[str] = set()
        for mm in graph.nodes_by_op("MatMul"):
            x = mm.inputs[0]
            if x in seen or mm.id not in graph.nx:
                continue
            seen.add(x)
            group = [n for n, slot in graph.consumers(x) if n.op_type == "MatMul" and slot == 0 and n.domain == ""
                     and graph.is_constant(n.inputs[1]) and graph.constants[n.inputs[1]].shape.__len__() == 2]
            by_kind = defaultdict(list)  # weights must share dtype and input size to be concatenated
            for n in group:
                c = graph.constants[n.inputs[1]]
                by_kind[(c.dtype, c.shape[0])].append(n)
            for members in by_kind.values():
                if len(members) < self.min_group:
                    continue
                out.candidates["QKV"] = out.candidates.get("QKV", 0) + 1
                why = self._pack(graph, x, members)
                label = members[0].name or members[0].outputs[0]
                if why:
                    out.details.append({"kind": "refused", "pattern": "QKV", "node": label, "reason": why})
                else:
                    out.fused["QKV"] = out.fused.get("QKV", 0) + 1
                    out.details.append({"kind": "fused", "pattern": "QKV", "node": label, "nodes": len(members)})
        return out.result()

    @staticmethod
    def _pack(graph: Graph, x: str, members) -> str | None:
        xt = graph.type_of(x)
        if xt.shape is None or len(xt.shape) < 2:
            return f"input '{x}' has rank < 2"
        if graph.opsets.get("", 1) < 13:
            return "Split with a sizes input needs opset 13"
        weights = [graph.constant(n.inputs[1]) for n in members]
        sizes = [w.shape[1] for w in weights]
        biases = []  # (Add node, bias array) per member, when it is followed by a constant bias
        for n, cols in zip(members, sizes):
            users = graph.consumers(n.outputs[0])
            add = bias = None
            if len(users) == 1 and users[0][0].op_type == "Add" and n.outputs[0] not in graph.outputs:
                add, slot = users[0]
                b = graph.constant(add.inputs[1 - slot])
                if b is not None and b.shape[-1:] == (cols,) and all(d == 1 for d in b.shape[:-1]):
                    bias = b
            biases.append((add, bias))
        with_bias = all(b is not None for _, b in biases)
        stem = members[0].name or "qkv"
        w = graph.add_constant(np.concatenate(weights, axis=1), f"{stem}.packed_weight")
        out_shape = None if xt.shape is None else tuple(xt.shape[:-1]) + (sum(sizes),)
        packed = emit(graph, "MatMul", [x, w], like=members[0], suffix="packed", types=[TensorType(xt.dtype, out_shape)])
        y = packed.outputs[0]
        if with_bias:
            b = graph.add_constant(np.concatenate([b.reshape(-1) for _, b in biases]), f"{stem}.packed_bias")
            y = emit(graph, "Add", [y, b], like=members[0], suffix="packed_bias", types=[graph.type_of(y)]).outputs[0]
        ends = [add for add, _ in biases] if with_bias else members
        split = emit(graph, "Split", [y, graph.add_constant(np.array(sizes, np.int64), f"{stem}.sizes")],
                     like=members[0], suffix="split", attrs={"axis": -1}, outputs=len(members),
                     types=[graph.type_of(e.outputs[0]) for e in ends])
        for end, new in zip(ends, split.outputs):
            graph.replace_all_uses(end.outputs[0], new)
        for end, mm in zip(ends, members):
            for n in (end, mm):
                if n.id in graph.nx and not any(graph.is_used(o) for o in n.outputs):
                    graph.remove_node(n)
        return None


@dataclass(frozen=True)
class FuseGemm(Pass):
    """MatMul + Add(bias) -> Gemm, for 2-D inputs only (Gemm is 2-D; 3-D MatMul+Add is left to the
    backend, which fuses it: ORT's MatMulAdd fusion, TVM's operator fusion).

    Rewrite cases:
    - Add(MatMul(A[M,K], B[K,N]), C) with C constant and broadcastable to [M, N] -> Gemm(A, B, C);
    refused: A not 2-D, C not constant or not broadcastable, target without Gemm.
    """

    name = "fuse-gemm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        def check(m: Match, g: Graph, c) -> str | None:
            a, b = g.type_of(m["a"]).shape, g.type_of(m["b"]).shape
            if a is None or len(a) != 2:
                return f"MatMul input is {len(a) if a else '?'}-D; Gemm takes 2-D"
            if b is None or len(b) != 2:
                return "MatMul weight is not 2-D"
            bias = g.type_of(m["c"]).shape
            try:
                if bias is None or np.broadcast_shapes(tuple(bias), (a[0] if isinstance(a[0], int) else 1, b[1])) \
                        != (a[0] if isinstance(a[0], int) else 1, b[1]):
                    return f"bias {bias} does not broadcast to [M, N]"
            except (ValueError, TypeError):
                return f"bias {bias} does not broadcast to [M, N]"
            if isinstance(a[0], str) or a[0] is None:
                if bias is not None and len(bias) == 2 and bias[0] != 1:
                    return "bias has rows but M is dynamic"
            return None if accepts(c, "Gemm") else "target does not accept Gemm"

        def rewrite(m: Match, g: Graph, c):
            return [emit(g, "Gemm", [m["a"], m["b"], m["c"]], like=m.node("matmul")).outputs[0]]

        pat = P("Add", P("MatMul", Var("a"), Var("b"), name="matmul"), Const("c"), name="add")
        return apply_rules(graph, [Rule("Gemm", pat, rewrite, check, anchor="matmul")], ctx).result()


@dataclass(frozen=True)
class FoldConvBatchNorm(Pass):
    """Fold an inference BatchNormalization into the Conv before it.

    Rewrite cases:
    - BatchNormalization(Conv(x, W[, b]), scale, B, mean, var) with constant parameters and no
      training outputs -> Conv(x, W * s, (b - mean) * s + B), s = scale / sqrt(var + eps) per
      output channel (the Conv's attributes are kept).
    """

    name = "fuse-conv-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        def check(m: Match, g: Graph, c) -> str | None:
            bn = m.node("bn")
            if bn.attr("training_mode", 0) or any(o and g.is_used(o) for o in bn.outputs[1:]):
                return "BatchNormalization runs in training mode"
            w = m.const("w")
            if m.const("scale").reshape(-1).size != w.shape[0]:
                return "BatchNormalization channels differ from the Conv's outputs"
            return None

        def rewrite(m: Match, g: Graph, c):
            conv, bn = m.node("conv"), m.node("bn")
            w = m.const("w").astype(np.float64)
            eps = float(bn.attr("epsilon", 1e-5))
            s = m.const("scale").astype(np.float64) / np.sqrt(m.const("var").astype(np.float64) + eps)
            b = m.const("b").astype(np.float64) if "b" in m else np.zeros(w.shape[0])
            new_w = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(m.const("w").dtype)
            new_b = ((b - m.const("mean")) * s + m.const("bias")).astype(m.const("w").dtype)
            stem = conv.name or "conv"
            ins = [m["x"], g.add_constant(new_w, f"{stem}.folded_weight"), g.add_constant(new_b, f"{stem}.folded_bias")]
            return [emit(g, "Conv", ins, like=conv, suffix="Conv_bn", attrs=dict(conv.attrs)).outputs[0]]

        rules = []
        for with_bias in (True, False):
            conv = P("Conv", Var("x"), Const("w"), Const("b"), name="conv") if with_bias else \
                P("Conv", Var("x"), Const("w"), name="conv", strict=True)
            bn = P("BatchNormalization", conv, Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn")
            rules.append(Rule("ConvBN", bn, rewrite, check, anchor="bn", form="bias" if with_bias else "no-bias"))
        return apply_rules(graph, rules, ctx).result()


@dataclass(frozen=True)
class UnpackProjections(Pass):
    """Split a packed projection whose output is only cut apart again (GEGLU's proj, exported QKV).

    Rewrite cases (ORT CPU only, unless `force`: a Split/Slice copy costs more there than the extra
    MatMuls, see fuse-qkv):
    - Split(MatMul(x, W)[+ b], axis=-1) and Slice(..., axis=-1, step 1) readers with constant bounds:
      each part becomes its own MatMul(x, W[:, part]) [+ b[part]]; the packed MatMul goes.
    """

    name = "unpack-projections"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.force and not ort_cpu(ctx):
            return PassResult(False, {"Unpack": "skipped: only pays on ORT CPU"})
        out = Outcome()
        for mm in graph.nodes_by_op("MatMul"):
            if mm.id not in graph.nx or not graph.is_constant(mm.inputs[1]) or graph.constant(mm.inputs[1]).ndim != 2:
                continue
            y, add, bias = mm.outputs[0], None, None
            users = graph.consumers(y)
            if len(users) == 1 and users[0][0].op_type == "Add" and y not in graph.outputs:
                add, slot = users[0]
                bias = graph.constant(add.inputs[1 - slot])
                if bias is None or bias.shape[-1:] != graph.constant(mm.inputs[1]).shape[1:] or \
                        any(d != 1 for d in bias.shape[:-1]):
                    continue
                y = add.outputs[0]
            parts = _parts(graph, y)
            if not parts or y in graph.outputs:
                continue
            out.candidates["Unpack"] = out.candidates.get("Unpack", 0) + 1
            w = graph.constant(mm.inputs[1])
            for reader, slot_out, (start, end) in parts:
                stem = f"{mm.name or 'proj'}_{start}_{end}"
                wk = graph.add_constant(np.ascontiguousarray(w[:, start:end]), f"{stem}.weight")
                t = graph.type_of(reader.outputs[slot_out])
                z = emit(graph, "MatMul", [mm.inputs[0], wk], like=mm, suffix=f"part{start}", types=[t]).outputs[0]
                if bias is not None:
                    bk = graph.add_constant(np.ascontiguousarray(bias.reshape(-1)[start:end]), f"{stem}.bias")
                    z = emit(graph, "Add", [z, bk], like=add, suffix=f"part{start}", types=[t]).outputs[0]
                graph.replace_all_uses(reader.outputs[slot_out], z)
            for n in dict.fromkeys([r for r, _, _ in parts] + ([add] if add is not None else []) + [mm]):
                if n.id in graph.nx and not any(graph.is_used(o) for o in n.outputs if o):
                    graph.remove_node(n)
            out.fused["Unpack"] = out.fused.get("Unpack", 0) + 1
            out.details.append({"kind": "fused", "pattern": "Unpack", "node": mm.name, "nodes": len(parts)})
        return out.result()


def _parts(graph: Graph, y: str):
    """[(reader, output slot, (start, end))] when every reader of y cuts a constant range of its last
    axis (Split with sizes or equal parts, Slice with step 1); else None."""
    shape = graph.type_of(y).shape
    if not shape or not isinstance(shape[-1], int):
        return None
    n, rank = shape[-1], len(shape)
    parts = []
    for reader, slot in graph.consumers(y):
        if slot != 0 or reader.domain not in ("", "ai.onnx"):
            return None
        if reader.op_type == "Split" and reader.attr("axis", 0) % rank == rank - 1:
            if len(reader.inputs) > 1 and reader.inputs[1]:
                sizes = graph.constant(reader.inputs[1])
                if sizes is None:
                    return None
                sizes = [int(v) for v in sizes.reshape(-1)]
            elif reader.attr("split") is not None:
                sizes = list(reader.attr("split"))
            else:
                k = len(reader.outputs)
                if n % k:
                    return None
                sizes = [n // k] * k
            start = 0
            for i, size in enumerate(sizes):
                parts.append((reader, i, (start, start + size)))
                start += size
        elif reader.op_type == "Slice" and all(graph.is_constant(i) for i in reader.inputs[1:] if i):
            args = [graph.constant(i).reshape(-1).tolist() if i else None for i in reader.inputs[1:]] + [None] * 4
            starts, ends, axes, steps = args[:4]
            if len(starts) != 1 or (axes is not None and axes[0] % rank != rank - 1) or (axes is None and rank != 1) \
                    or (steps is not None and steps[0] != 1):
                return None
            s0 = max(0, starts[0] + n if starts[0] < 0 else min(starts[0], n))
            e0 = max(0, ends[0] + n if ends[0] < 0 else min(ends[0], n))
            if e0 <= s0:
                return None
            parts.append((reader, 0, (s0, e0)))
        else:
            return None
    return parts or None


@dataclass(frozen=True)
class TemporalConvAs2d(Pass):
    """A 3-D Conv whose kernel spans only frames (SVD/AnimateDiff temporal convs) as a 2-D Conv.

    Rewrite cases (ORT CPU only, unless `force`: there 2-D Convs run in its blocked NCHWc layout,
    3-D ones do not; measured 10-15 % faster per conv on svd-unet:small's shapes, one thread):
    - Conv(x[N, C, T, H, W], W[M, C/g, k, 1, 1] constant[, b]) with unit stride and dilation over
      H and W, no padding of H and W, explicit pads -> Reshape(x, [N, C, T, H*W]) -> Conv(W[..., 0])
      with the frame axis's stride, dilation and pads -> Reshape([N, M, T', H, W]) (views, no copies).
    """

    name = "temporal-conv-2d"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.force and not ort_cpu(ctx):
            return PassResult(False, {"TemporalConv": "skipped: only measured to pay on ORT CPU"})

        def check(m: Match, g: Graph, c) -> str | None:
            conv, w = m.node("conv"), m.const("w")
            x, y = g.type_of(m["x"]).shape, g.type_of(conv.outputs[0]).shape
            if w.ndim != 5 or w.shape[3:] != (1, 1):
                return "not a 3-D Conv with a kernel over frames only"
            if not (static(x) and static(y)) or len(x) != 5:
                return "input or output shape is not static"
            if conv.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                return "auto_pad"
            strides, dil = list(conv.attr("strides") or [1] * 3), list(conv.attr("dilations") or [1] * 3)
            pads = list(conv.attr("pads") or [0] * 6)
            if strides[1:] != [1, 1] or dil[1:] != [1, 1] or pads[1:3] + pads[4:6] != [0, 0, 0, 0]:
                return "strided, dilated or padded over height/width"
            return None

        def rewrite(m: Match, g: Graph, c):
            conv = m.node("conv")
            (n, ch, t, h, wd), y = g.type_of(m["x"]).shape, g.type_of(conv.outputs[0]).shape
            dt = g.type_of(m["x"]).dtype
            stem = conv.name or "conv"
            flat = emit(g, "Reshape", [m["x"], g.add_constant(np.array([n, ch, t, h * wd], np.int64), f"{stem}.flat")],
                        like=conv, suffix="flat", types=[TensorType(dt, (n, ch, t, h * wd))]).outputs[0]
            pads = list(conv.attr("pads") or [0] * 6)
            attrs = {"strides": [(conv.attr("strides") or [1])[0], 1], "dilations": [(conv.attr("dilations") or [1])[0], 1],
                     "pads": [pads[0], 0, pads[3], 0], "group": int(conv.attr("group", 1))}
            w2 = g.add_constant(np.ascontiguousarray(m.const("w")[..., 0]), f"{stem}.weight2d")
            ins = [flat, w2] + ([m["b"]] if "b" in m else [])
            z = emit(g, "Conv", ins, like=conv, suffix="Conv2d", attrs=attrs,
                     types=[TensorType(dt, (y[0], y[1], y[2], h * wd))]).outputs[0]
            back = g.add_constant(np.array(list(y), np.int64), f"{stem}.unflat")
            return [emit(g, "Reshape", [z, back], like=conv, suffix="unflat", types=[g.type_of(conv.outputs[0])]).outputs[0]]

        rules = [Rule("TemporalConv", P("Conv", Var("x"), Const("w"), Const("b"), name="conv"), rewrite, check, form="bias"),
                 Rule("TemporalConv", P("Conv", Var("x"), Const("w"), name="conv", strict=True), rewrite, check,
                      form="no-bias")]
        return apply_rules(graph, rules, ctx).result()


# ---- nearest 2x upsampling followed by a 3x3 convolution ----------------------------------------------
_RESIZE_MODES = {"half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "asymmetric", "tf_half_pixel_for_nn",
                 "align_corners"}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nearest_source(length: int, coord: str, rounding: str) -> list[int] | None:
    """The input index ONNX Resize (mode nearest, scale 2) reads for each of the 2*length outputs."""
    out = 2 * length
    idx = []
    for x in range(out):
        if coord in ("half_pixel", "half_pixel_symmetric"):
            o = (x + 0.5) / 2 - 0.5
        elif coord == "pytorch_half_pixel":
            o = (x + 0.5) / 2 - 0.5 if out > 1 else 0.0
        elif coord == "asymmetric":
            o = x / 2
        elif coord == "tf_half_pixel_for_nn":
            o = (x + 0.5) / 2
        elif coord == "align_corners":
            o = 0.0 if out == 1 else x * (length - 1) / (out - 1)
        else:
            return None
        if rounding == "floor":
            i = np.floor(o)
        elif rounding == "ceil":
            i = np.ceil(o)
        elif rounding == "round_prefer_ceil":
            i = np.floor(o + 0.5)
        else:  # round_prefer_floor, the default
            i = np.ceil(o - 0.5)
        idx.append(int(min(max(i, 0), length - 1)))
    return idx


def _upsample_why(g: Graph, resize) -> str | None:
    """Why a Resize is not a nearest 2x upsampling of the last two axes of a 4-D tensor (or None)."""
    if _text(resize.attr("mode", "nearest")) != "nearest":
        return f"Resize mode {_text(resize.attr('mode'))}, not nearest"
    if resize.attr("axes") is not None:
        return "Resize with an axes attribute"
    x = g.type_of(resize.inputs[0]).shape
    if x is None or len(x) != 4:
        return f"Resize input is not 4-D ({g.type_of(resize.inputs[0])})"
    ins = list(resize.inputs) + [""] * 4
    scales = sizes = None
    if g.opsets.get("", 1) < 11:
        scales = g.constant(ins[1]) if ins[1] else None
    else:
        scales = g.constant(ins[2]) if ins[2] else None
        sizes = g.constant(ins[3]) if ins[3] else None
    if scales is not None and scales.size:
        if [float(v) for v in scales.reshape(-1)] != [1.0, 1.0, 2.0, 2.0]:
            return f"Resize scales {scales.reshape(-1).tolist()}, not [1, 1, 2, 2]"
    elif sizes is not None and sizes.size:
        if not static(x) or [int(v) for v in sizes.reshape(-1)] != [x[0], x[1], 2 * x[2], 2 * x[3]]:
            return f"Resize sizes {sizes.reshape(-1).tolist()} do not double the last two axes of {list(x)}"
    else:
        return "Resize scales/sizes are not constant"
    coord = _text(resize.attr("coordinate_transformation_mode", "half_pixel"))
    rounding = _text(resize.attr("nearest_mode", "round_prefer_floor"))
    if coord not in _RESIZE_MODES:
        return f"coordinate_transformation_mode {coord}"
    lengths = [d for d in x[2:] if isinstance(d, int)] or list(range(1, 9))  # any length when dynamic
    for n in set(lengths) | ({1, 2, 3, 8} if len(lengths) < 2 else set()):
        if _nearest_source(n, coord, rounding) != [i // 2 for i in range(2 * n)]:
            return f"{coord}/{rounding} nearest does not read input index floor(i/2) for output i"
    return None


def _phase_taps(w: np.ndarray, phase: int, axis: int) -> np.ndarray:
    """The 2 taps a 3-tap kernel axis reduces to on the rows (or columns) of one output phase of a
    nearest 2x upsampling: even outputs read input i-1 (tap 0) and i (taps 1+2), odd ones i (taps 0+1)
    and i+1 (tap 2)."""
    k0, k1, k2 = (np.take(w, i, axis=axis) for i in range(3))
    return np.stack([k0, k1 + k2] if phase == 0 else [k0 + k1, k2], axis=axis)


def _interleave(g: Graph, like, phases: list[str], yt: TensorType) -> str:
    """Y[n, c, 2i+a, 2j+b] = P_ab[n, c, i, j] from the phase outputs P_00, P_01, P_10, P_11 (static shapes)."""
    n, c, h2, w2 = yt.shape
    h, w = h2 // 2, w2 // 2
    dt = yt.dtype
    last = g.add_constant(np.array([-1], np.int64), "phase.last_axis")
    row_axis = g.add_constant(np.array([3], np.int64), "phase.row_axis")
    rows = []
    for a in (0, 1):
        cols = [emit(g, "Unsqueeze", [phases[2 * a + b], last], like=like, suffix=f"phase{a}{b}_col",
                     types=[TensorType(dt, (n, c, h, w, 1))]).outputs[0] for b in (0, 1)]
        pair = emit(g, "Concat", cols, like=like, suffix=f"row{a}_cols", attrs={"axis": -1},
                    types=[TensorType(dt, (n, c, h, w, 2))]).outputs[0]
        row = emit(g, "Reshape", [pair, g.add_constant(np.array([n, c, h, w2], np.int64), "phase.row_shape")], like=like,
                   suffix=f"row{a}", types=[TensorType(dt, (n, c, h, w2))]).outputs[0]
        rows.append(emit(g, "Unsqueeze", [row, row_axis], like=like, suffix=f"row{a}_axis",
                         types=[TensorType(dt, (n, c, h, 1, w2))]).outputs[0])
    both = emit(g, "Concat", rows, like=like, suffix="rows", attrs={"axis": 3},
                types=[TensorType(dt, (n, c, h, 2, w2))]).outputs[0]
    return emit(g, "Reshape", [both, g.add_constant(np.array([n, c, h2, w2], np.int64), "phase.out_shape")], like=like,
                suffix="interleave", types=[yt]).outputs[0]


@dataclass(frozen=True)
class FuseUpsampleConv(Pass):
    """Nearest 2x upsampling followed by a 3x3 Conv (the UNet Upsample2D) as four 2x2 Convs on the
    small input, one per output phase, interleaved: 16/36 of the multiply-adds.

    Rewrite cases (ORT CPU only, unless `force`; measured there on svd-unet:small's two upsamplers, one
    thread: 12.7 -> 6.5 ms and 13.1 -> 6.7 ms; with DepthToSpace interleaving 6.7 and 7.4 ms):
    - Conv(Resize(x[N, C, H, W], nearest, scales [1, 1, 2, 2] or sizes [N, C, 2H, 2W]), W[M, C/g, 3, 3]
      constant[, b]) with pads [1, 1, 1, 1], unit strides and dilations, the Resize read only by the
      Conv, and a coordinate mode whose nearest index is floor(i/2) (asymmetric/floor, half_pixel/round...)
      -> Conv(x, W_ab[M, C/g, 2, 2], pads [1-a, 1-b, a, b]) for the phases (a, b) in (0,0), (0,1), (1,0),
      (1,1), interleaved: Unsqueeze(-1) + Concat(-1) + Reshape puts the column phases side by side,
      Unsqueeze(3) + Concat(3) + Reshape the row phases (static shapes; otherwise Concat(axis 1) ->
      DepthToSpace(2, DCR), whose ORT CPU kernel is slower). Each phase kernel sums the 3x3 taps that
      read the same input pixel, so the result equals the original up to float rounding (rel ~1e-7).
    """

    name = "fuse-upsample-conv"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.force and not ort_cpu(ctx):
            return PassResult(False, {"UpsampleConv": "skipped: only measured to pay on ORT CPU"})

        def check(m: Match, g: Graph, c) -> str | None:
            conv, w = m.node("conv"), m.const("w")
            if w.ndim != 4 or w.shape[2:] != (3, 3):
                return f"Conv weight {list(w.shape)} is not a 3x3 2-D kernel"
            if _text(conv.attr("auto_pad", "NOTSET")) != "NOTSET":
                return "auto_pad"
            if list(conv.attr("pads") or [0] * 4) != [1, 1, 1, 1]:
                return f"Conv pads {conv.attr('pads')}, not [1, 1, 1, 1]"
            if list(conv.attr("strides") or [1, 1]) != [1, 1] or list(conv.attr("dilations") or [1, 1]) != [1, 1]:
                return "strided or dilated Conv"
            if g.opsets.get("", 1) < 11:
                return "DepthToSpace mode DCR needs opset 11"
            return _upsample_why(g, m.node("resize"))

        def rewrite(m: Match, g: Graph, c):
            conv, w = m.node("conv"), m.const("w")
            x, xt, yt = m["x"], g.type_of(m["x"]), g.type_of(conv.outputs[0])
            n, _, h, wd = xt.shape
            wide = w.astype(np.float64)
            stem, group = conv.name or "conv", int(conv.attr("group", 1))
            phases = []
            for a in (0, 1):
                for b in (0, 1):
                    k = _phase_taps(_phase_taps(wide, a, 2), b, 3).astype(w.dtype)
                    ins = [x, g.add_constant(np.ascontiguousarray(k), f"{stem}.phase{a}{b}")]
                    ins += [m["b"]] if "b" in m else []
                    attrs = {"kernel_shape": [2, 2], "pads": [1 - a, 1 - b, a, b], "strides": [1, 1],
                             "dilations": [1, 1], "group": group}
                    phases.append(emit(g, "Conv", ins, like=conv, suffix=f"phase{a}{b}", attrs=attrs,
                                       types=[TensorType(yt.dtype, (n, w.shape[0], h, wd))]).outputs[0])
            if not static(yt.shape):  # DepthToSpace needs no shape (measured ~0.5 ms slower per upsampler)
                cat = emit(g, "Concat", phases, like=conv, suffix="phases", attrs={"axis": 1},
                           types=[TensorType(yt.dtype, (n, 4 * w.shape[0], h, wd))]).outputs[0]
                return [emit(g, "DepthToSpace", [cat], like=conv, suffix="interleave",
                             attrs={"blocksize": 2, "mode": "DCR"}, types=[yt]).outputs[0]]
            return [_interleave(g, conv, phases, yt)]

        resize = P("Resize", Var("x"), name="resize")  # scales/sizes are read by the check
        rules = [Rule("UpsampleConv", P("Conv", resize, Const("w"), Const("b"), name="conv"), rewrite, check,
                      anchor="resize", form="bias"),
                 Rule("UpsampleConv", P("Conv", resize, Const("w"), name="conv", strict=True), rewrite, check,
                      anchor="resize", form="no-bias")]
        return apply_rules(graph, rules, ctx).result()


PASSES = [PackProjections, FuseGemm, FoldConvBatchNorm, UnpackProjections, TemporalConvAs2d, FuseUpsampleConv]

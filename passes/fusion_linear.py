"""Linear-layer fusions: QKV projection packing, MatMul+Add -> Gemm, Conv+BatchNormalization folding."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, Outcome, P, Rule, Var, apply_rules, emit

from ._fusion import accepts


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
    """

    name = "fuse-qkv"
    min_group: int = 2

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
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


PASSES = [PackProjections, FuseGemm, FoldConvBatchNorm]

"""Dense MoE dispatch: token-routed experts without data-dependent shapes (for TensorRT).

A token-level top-k MoE exported from torch dispatches sparsely: for each expert e,
`token, slot = where(chosen == e)` is a NonZero whose length depends on the data, the expert runs on
the gathered rows, its output is scaled by `weights[token, slot]` and scattered back (index_add).
TensorRT's ONNX parser has no NonZero ("importNonZero: UNSUPPORTED_NODE"). The dense form runs every
expert on every token and weights it by the token's gate for that expert, zero where the router did
not pick it: `out += expert_e(x) * sum_s where(chosen == e, weights, 0)[:, s]`.

Cost: each expert runs on all tokens instead of the ~top_k/num_experts of them routed to it, so the
expert FLOPs grow num_experts/top_k times (4x for moe-dit's 8 experts, top-2); router and the rest
of the model are unchanged. Under `--bind timestep=...` (precompute-routers first) only the picked
experts are left and the dense form costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np
from onnx import TensorProto

from vidcc.channels import const_value
from vidcc.ir import Graph, Node, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.passes._dispatch import Facts
from vidcc.passes.dce import DeadCodeElimination

MAX_REGION = 4000  # nodes between one NonZero and its scatters; a larger cone is not an expert dispatch
INT64_MAX = np.iinfo(np.int64).max
UNARY = {"Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Cast", "Identity",
         "Softplus", "Softsign", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Mish",
         "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Clip"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less",
               "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod"}
KEEP_ZERO = {"Cast", "Identity", "Neg", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Transpose"}
SHAPE_OPS = {"Gather", "Concat", "Slice", "Unsqueeze", "Squeeze", "Cast", "Reshape", "Identity", "Add", "Sub", "Mul",
             "Div", "Max", "Min"}


@dataclass(frozen=True)
class DenseMoEDispatch(Pass):
    """Rewrite sparse token dispatch to experts (NonZero -> gather -> expert -> scatter) as dense
    masked compute: every expert on every token, weighted by its gate (zero where not routed).

    Rewrite cases, for each NonZero(mask) with a rank-2 mask [tokens, top_k] (`chosen == e`):
    - Gather(x, token, axis 0) / GatherND(x, token[:, None]): x itself (the expert sees every token);
    - the gate `weights[token, slot]` (GatherND(w, [token, slot]), or Gather(Flatten(w), token*k + slot)
      as the legacy exporter writes it): ReduceSum(Where(mask, w, 0), axis 1), the token's weight for
      expert e or 0;
    - ops between them (the expert: Gemm/MatMul with weights, elementwise, reshapes that keep the token
      axis, Shape bookkeeping): the same op on the dense tensors;
    - ScatterND(z, token[:, None], u) with reduction add, ScatterElements(z, token expanded, u, axis 0)
      with reduction add, or either with reduction none into zeros (index_add; top-k never picks an
      expert twice for a token): Add(z, u), u being zero on the tokens not routed to e.
    Then DCE drops NonZero and the index arithmetic. Exact: unselected tokens add expert(x) * 0 (finite
    expert outputs assumed), selected ones add what the scatter added. Where the types cannot prove that
    x, the mask and z have the same token count (the legacy export's unknown dims), x and z are reshaped
    to the mask's count, which fails at run time rather than broadcasting if they ever differ.

    Refused with the reason: masks of other rank, indices reaching ops with no dense form, expert
    outputs not scaled by the gate (unselected tokens would be added), overwrite scatters whose mask
    may pick an expert twice per token, and (option `max_ratio`) layers whose dense form would cost
    more than that many times the sparse expert FLOPs (num_experts / top_k; 0 = no limit).
    """

    name = "dense-moe-dispatch"
    max_ratio: float = 0.0

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nonzeros = [n for n in graph.nodes_by_op("NonZero") if n.domain in ("", "ai.onnx")]
        if not nonzeros:
            return PassResult(False, {})
        if graph.opsets.get("", 1) < 13:
            return PassResult(False, {"dispatches": f"0/{len(nonzeros)}"}, [
                {"kind": "refused", "node": n.name or n.label, "op": "NonZero",
                 "reason": f"opset {graph.opsets.get('', 1)} < 13 (axes inputs of ReduceSum/Unsqueeze)"}
                for n in nonzeros])
        shared = _Shared(graph)
        details, done, layers, ratios = [], 0, set(), set()
        for nz in sorted(nonzeros, key=lambda n: graph._order[n.id]):
            d = _Dispatch(graph, nz, shared)
            reason = d.analyze()
            ratio = d.ratio()
            if reason is None and self.max_ratio and ratio and ratio > self.max_ratio:
                reason = f"dense costs {ratio:g}x the sparse expert FLOPs (max_ratio={self.max_ratio:g})"
            if reason:
                details.append({"kind": "refused", "node": nz.name or nz.label, "op": "NonZero", "reason": reason})
                continue
            d.emit()
            done += 1
            layers.add(d.source)
            if ratio:
                ratios.add(ratio)
            details.append({"kind": "rewritten", "node": nz.name or nz.label, "op": "NonZero",
                            "reason": "dense dispatch: expert on every token, gated" +
                                      (f" ({ratio:g}x its sparse FLOPs)" if ratio else "")})
        if done:
            DeadCodeElimination().run(graph, ctx)
        stats = {"dispatches": f"{done}/{len(nonzeros)}", "moe_layers": len(layers)}
        if ratios:
            stats["expert_flops_factor"] = "/".join(f"{r:g}x" for r in sorted(ratios))
        return PassResult(bool(done), stats, details)


# ---- kinds of the tensors computed from one NonZero ---------------------------------------------------
# ("pairs", axis)           NonZero's [2, n] (axis 0) or its transpose [n, 2] (axis 1): token, slot
# ("idx", which, layout)    which: "token" | "slot" | ("linear", m) = token*m + slot | ("scaled", m) = token*m;
#                           layout: "vec" [n] | "col" [n, 1] | "pair" [n, 2] (token, slot) | "expanded"
# ("rows", zero)            a tensor whose axis 0 runs over the dispatched tokens; its dense form runs over
#                           every token; zero: the dense form is 0 on the tokens not routed here
# ("shape", lead)           a value computed from the shape of rows (the count n); dense: the same from T;
#                           lead: its first element is n (a shape with the token axis first)
Kind = tuple


class _Shared:
    """What the dispatches of one pass run share: the token count vector and aligned inputs per mask
    source (all experts of one MoE layer read one `chosen`)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.count: dict[str, str] = {}
        self.aligned: dict[tuple[str, str], str] = {}
        self._facts: Facts | None = None

    def facts(self) -> Facts:
        if self._facts is None:
            self._facts = Facts(self.graph)
        return self._facts


class _Dispatch:
    def __init__(self, graph: Graph, nz: Node, shared: _Shared):
        self.g, self.nz, self.shared = graph, nz, shared
        self.mask = nz.inputs[0]
        self.source = _mask_source(graph, self.mask)  # `chosen` of Equal(chosen, e), else the mask
        self.kind: dict[str, Kind] = {}
        self.steps: list[Callable[[], None]] = []
        self.dense: dict[str, str] = {}
        self.overwrites = False

    # ---- analysis: classify every tensor computed from the NonZero, no change to the graph ----------
    def analyze(self) -> str | None:
        g = self.g
        mtype = g.type_of(self.mask)
        out_shape = g.type_of(self.nz.outputs[0]).shape
        rank = len(mtype.shape) if mtype.shape is not None else \
            (out_shape[0] if out_shape and isinstance(out_shape[0], int) else None)
        if rank != 2:
            return f"NonZero over a mask of rank {'unknown' if rank is None else rank} (dense needs [tokens, top_k])"
        region = self._region()
        if isinstance(region, str):
            return region
        self.kind[self.nz.outputs[0]] = ("pairs", 0)
        for node in region:
            reason = self._classify(node)
            if reason:
                return f"{reason} ({node.name or node.label})"
        if self.overwrites and not _distinct_rows(g, self.source):
            return "overwrite scatter, and the mask may pick an expert twice for a token (not top-k indices)"
        return None

    def _region(self) -> list[Node] | str:
        g = self.g
        seen: dict[int, Node] = {}
        todo = [self.nz]
        while todo:
            node = todo.pop()
            if node.id in seen:
                continue
            seen[node.id] = node
            if len(seen) > MAX_REGION:
                return f"more than {MAX_REGION} nodes read NonZero's indices before a scatter"
            if node is not self.nz and node.op_type in ("ScatterND", "ScatterElements"):
                continue  # a sink: what it writes is a plain tensor again
            for out in node.outputs:
                if out in g.outputs:
                    return f"a graph output ({out}) depends on NonZero's indices"
                todo.extend(c for c in g.consumer_nodes(out) if c.id not in seen)
        sub = g.nx.subgraph(seen)
        return [g.node(i) for i in nx.topological_sort(sub) if i != self.nz.id]

    def _classify(self, node: Node) -> str | None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return f"{node.domain}.{op} reads dispatched tensors"
        ins = node.inputs
        kinds = [self.kind.get(i) if i else None for i in ins]
        tracked = [k for k in kinds if k is not None]
        if not tracked:  # reads the dispatch implicitly (a subgraph) or through an output with no kind
            return f"{op} reads the dispatch in a way with no dense form"
        head = tracked[0][0]
        if op in ("ScatterND", "ScatterElements"):
            return self._sink(node, kinds)
        if head in ("pairs", "idx"):
            return self._index(node, kinds)
        if all(k[0] == "shape" for k in tracked):
            return self._shape(node, kinds)
        return self._rows(node, kinds)

    # index arithmetic ---------------------------------------------------------------------------------
    def _index(self, node: Node, kinds: list) -> str | None:
        g, op, ins = self.g, node.op_type, node.inputs
        k0 = kinds[0]
        out = node.outputs[0]
        if any(k is not None for k in kinds[1:]) and op not in ("Add", "Mul", "Concat", "Gather", "GatherND", "Expand"):
            return f"{op} combines NonZero's indices"
        if k0 is None and op not in ("Gather", "GatherND", "Add", "Mul"):
            return f"NonZero's indices reach {op} as a parameter"
        if k0 is not None and k0[0] == "pairs":
            axis = k0[1]
            if op == "Transpose" and list(node.attr("perm", [1, 0])) == [1, 0]:
                self.kind[out] = ("pairs", 1 - axis)
                return None
            if op == "Split" and _axis(node.attr("axis", 0), 2) == axis and len(node.outputs) == 2:
                sizes = const_value(g, ins[1]) if len(ins) > 1 and ins[1] else node.attr("split")
                if sizes is not None and [int(s) for s in np.asarray(sizes).reshape(-1)] != [1, 1]:
                    return "Split of NonZero's pairs into other than two columns"
                if axis == 0:
                    return "Split of NonZero's [2, n] output along axis 0"
                self.kind[node.outputs[0]] = ("idx", "token", "col")
                self.kind[node.outputs[1]] = ("idx", "slot", "col")
                return None
            if op == "Slice":
                comp = _slice_component(g, node, axis)
                if comp is None or axis == 0:
                    return "Slice of NonZero's pairs that is not one column of [n, 2]"
                self.kind[out] = ("idx", comp, "col")
                return None
            if op == "Gather" and _axis(node.attr("axis", 0), 2) == axis:
                c = const_value(g, ins[1])
                if c is None or c.ndim != 0 or int(c) % 2 not in (0, 1):
                    return "Gather from NonZero's pairs at a non-constant or non-scalar index"
                self.kind[out] = ("idx", ("token", "slot")[int(c) % 2], "vec")
                return None
            return f"NonZero's pairs reach {op}"
        if op in ("Gather", "GatherND"):
            return self._take(node, kinds)
        first = next(k for k in kinds if k is not None)
        if first[0] != "idx":
            return f"{op} of NonZero's pairs with other tensors"
        which, layout = first[1], first[2]
        if op in ("Squeeze", "Reshape", "Unsqueeze", "Identity", "Cast"):
            if op == "Cast" and node.attr("to") not in (TensorProto.INT64, TensorProto.INT32):
                return "Cast of NonZero's indices to a non-integer type"
            new = _relayout(g, node, layout)
            if new is None:
                return f"{op} of NonZero's indices to a layout other than [n] or [n, 1]"
            self.kind[out] = ("idx", which, new)
            return None
        if op == "Mul" and layout == "vec" and which == "token":
            if len(ins) != 2 or all(k is not None for k in kinds):
                return "Mul of two index tensors"
            self.kind[out] = ("idx", ("scaled", ins[1] if kinds[0] is not None else ins[0]), "vec")
            return None
        if op == "Add" and all(k is not None and k[0] == "idx" and k[2] == "vec" for k in kinds):
            whiches = [k[1] for k in kinds]
            scaled = [w for w in whiches if isinstance(w, tuple) and w[0] == "scaled"]
            if "slot" in whiches and len(scaled) == 1:
                self.kind[out] = ("idx", ("linear", scaled[0][1]), "vec")
                return None
            return "Add of index tensors other than token*k + slot"
        if op == "Concat" and len(ins) == 2 and kinds[0] == ("idx", "token", "col") \
                and kinds[1] == ("idx", "slot", "col") and _axis(node.attr("axis"), 2) == 1:
            self.kind[out] = ("idx", "pair", "pair")
            return None
        if op == "Expand" and which == "token" and layout == "col" and (kinds[1] is None or kinds[1][0] == "shape"):
            self.kind[out] = ("idx", "token", "expanded")
            return None
        if op == "Shape" and layout in ("vec", "col") and not node.attrs:
            self.kind[out] = ("shape", True)
            self.steps.append(lambda: self._set(out, self._count() if layout == "vec" else self._add(
                "Concat", [self._count(), self._const(np.array([1], np.int64))], TensorType(TensorProto.INT64, (2,)),
                axis=0)))
            return None
        return f"NonZero's indices reach {op}"

    def _take(self, node: Node, kinds: list) -> str | None:
        """Gather/GatherND at dispatched indices: the expert's input rows, or the gate weights."""
        g, op, ins, out = self.g, node.op_type, node.inputs, node.outputs[0]
        if kinds[0] is not None:
            return f"{op} reads NonZero's indices as data"
        idx = kinds[1]
        if op == "GatherND" and node.attr("batch_dims", 0) != 0:
            return "GatherND with batch_dims"
        if (op == "Gather" and idx[1:] == ("token", "vec") and _axis0(g, node)) or \
                (op == "GatherND" and idx[1:] == ("token", "col")):
            x = ins[0]
            self.kind[out] = ("rows", False)
            self.steps.append(lambda: self._set(out, self._aligned(x)))
            return None
        if op == "GatherND" and (idx[1:] == ("pair", "pair") or idx == ("pairs", 1)):
            w = ins[0]
            if (r := _rank(g, w)) not in (2, None):
                return f"gate gathered from a rank-{r} tensor"
            self.kind[out] = ("rows", True)
            self.steps.append(lambda: self._set(out, self._gate(w, keepdims=False)))
            return None
        if op == "Gather" and isinstance(idx[1], tuple) and idx[1][0] == "linear" and idx[2] == "vec" \
                and _axis0(g, node):
            flat = g.producer(ins[0])
            w, keep = _flattened(g, flat)
            if w is None:
                return "gate gathered at token*k + slot from something other than the flattened weights"
            if not _is_columns(g, idx[1][1], w, self.mask):
                return "gate index token*k + slot with k not proven to be the weights' column count"
            self.kind[out] = ("rows", True)
            self.steps.append(lambda: self._set(out, self._gate(w, keepdims=keep)))
            return None
        return f"{op} at dispatched indices that is neither the expert's input nor its gate"

    # shape bookkeeping --------------------------------------------------------------------------------
    def _shape(self, node: Node, kinds: list) -> str | None:
        g, op, ins = self.g, node.op_type, node.inputs
        k0 = kinds[0]
        lead = k0 is not None and k0[1]
        if op in ("Concat", "Add", "Sub", "Mul", "Div", "Max", "Min"):
            # n*c, n+c ... stay n-dependent but are no longer "n first"
            self._clone(node, ("shape", lead and op == "Concat"))
            return None
        if op in ("Expand", "ConstantOfShape") and kinds[-1] is not None and all(k is None for k in kinds[:-1]):
            if not kinds[-1][1]:
                return f"{op} to a shape whose first element is not the token count"
            if op == "Expand" and not _same_len(g, ins[1], ins[0]):
                return "Expand to the token count that may add leading axes"
            zero = self.shared.facts().is_zeros(node.outputs[0])  # a fill or an expand of zeros
            self._clone(node, ("rows", zero))
            return None
        if k0 is None or any(k is not None for k in kinds[1:]):
            return f"{op} of the dispatched token count"
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
            self._clone(node, ("shape", lead))
            return None
        if op in ("Gather", "Slice"):
            first = const_value(g, ins[1])  # Gather's index, Slice's start
            axes = const_value(g, ins[3]) if op == "Slice" and len(ins) > 3 and ins[3] else None
            ok = first is not None and first.size == 1 and int(first.reshape(-1)[0]) == 0 and \
                (axes is None or int(axes.reshape(-1)[0]) == 0) and (op == "Slice" or node.attr("axis", 0) == 0)
            self._clone(node, ("shape", lead and ok))
            return None
        return f"{op} of the dispatched token count"

    # the expert: ops on dispatched rows -------------------------------------------------------------
    def _rows(self, node: Node, kinds: list) -> str | None:
        g, op, ins = self.g, node.op_type, node.inputs
        rows = [i for i, k in zip(ins, kinds) if k is not None and k[0] == "rows"]
        if any(k is not None and k[0] not in ("rows", "shape") for k in kinds):
            return f"{op} mixes expert rows and NonZero's indices"
        zero = [bool(k[1]) for k in kinds if k is not None and k[0] == "rows"]
        x = rows[0]
        rank = _rank(g, x)
        out_kind = ("rows", False)
        if op == "Shape":
            if any(k is not None for k in kinds[1:]):
                return "Shape with dispatched parameters"
            self._clone(node, ("shape", not node.attr("start", 0)))
            return None
        if op in UNARY and kinds[0] is not None:
            if any(k is not None for k in kinds[1:]):
                return f"{op} with dispatched parameters"
            out_kind = ("rows", zero[0] and op in KEEP_ZERO)
        elif op in ELEMENTWISE:
            for i, k in zip(ins, kinds):
                if k is None and i and not _broadcasts(g, i, rank):
                    return f"{op} with {i}, whose first axis may not broadcast over the tokens"
            if op == "Mul":
                out_kind = ("rows", any(zero))
            elif op == "Div":
                out_kind = ("rows", kinds[0] is not None and kinds[0][0] == "rows" and kinds[0][1])
            elif op in ("Add", "Sub", "Sum"):
                out_kind = ("rows", all(k is not None and k[0] == "rows" and k[1] for k in kinds if True))
        elif op in ("MatMul", "Gemm"):
            if kinds[0] is None or any(k is not None for k in kinds[1:]):
                return f"{op} whose weights depend on the dispatch"
            if op == "Gemm" and node.attr("transA", 0):
                return "Gemm with transA"
            wr = _rank(g, ins[1])
            if rank is not None and rank < 2 or wr is None or not (wr == 2 or (rank is not None and wr < rank)):
                return f"{op} that may not be row by row (ranks {rank}, {wr})"
            has_bias = op == "Gemm" and len(ins) > 2 and bool(ins[2])
            out_kind = ("rows", zero[0] and not has_bias)
        elif op in ("Softmax", "LogSoftmax", "LayerNormalization"):
            if kinds[0] is None or any(k is not None for k in kinds[1:]):
                return f"{op} with dispatched parameters"
            if rank is None or _axis(node.attr("axis", -1), rank) == 0:
                return f"{op} over the token axis"
        elif op in ("Reshape", "Expand"):
            if kinds[0] is None:
                return f"{op} of a plain tensor to the dispatched shape"
            if kinds[1] is None:
                reason = _reshape_keeps_rows(g, node) if op == "Reshape" else _expand_keeps_rows(g, node)
                if reason:
                    return reason
            elif not kinds[1][1]:
                return f"{op} of expert rows to a shape whose first element is not the token count"
            elif op == "Expand" and not _same_len(g, ins[1], ins[0]):
                return "Expand of expert rows that may add leading axes"
            out_kind = ("rows", zero[0])
        elif op in ("Unsqueeze", "Squeeze", "Flatten", "Transpose"):
            if any(k is not None for k in kinds[1:]):
                return f"{op} with dispatched parameters"
            if not _keeps_axis0(g, node, rank):
                return f"{op} that moves the token axis"
            out_kind = ("rows", zero[0])
        elif op == "Slice":
            axes = const_value(g, ins[3]) if len(ins) > 3 and ins[3] else None
            if axes is None or rank is None or 0 in [_axis(int(a), rank) for a in axes.reshape(-1)] \
                    or any(k is not None for k in kinds[1:]):
                return "Slice that may cut the token axis"
            out_kind = ("rows", zero[0])
        else:
            return f"{op} has no dense form here (not known to work token by token)"
        self._clone(node, out_kind)
        return None

    # the scatter back -----------------------------------------------------------------------------------
    def _sink(self, node: Node, kinds: list) -> str | None:
        g, op, ins = self.g, node.op_type, node.inputs
        if kinds[0] is not None:
            return f"{op} into dispatched data"
        upd = kinds[2]
        if upd is None or upd[0] != "rows":
            return f"{op} of updates that are not expert rows"
        if not upd[1]:
            return "expert output not scaled by the gate (unselected tokens would be added)"
        reduction = node.attr("reduction", "none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if op == "ScatterND":
            if kinds[1] is None or kinds[1][1:] != ("token", "col"):
                return "ScatterND at indices other than the dispatched tokens [n, 1]"
        else:
            if not _axis0(g, node):
                return "ScatterElements along an axis other than the tokens"
            if kinds[1] is None or kinds[1][1] != "token" or kinds[1][2] not in ("expanded", "col"):
                return "ScatterElements at indices other than the dispatched tokens"
            reason = _same_trailing(g, ins[0], ins[2])
            if reason:
                return reason
        if reduction not in ("add", "none"):
            return f"{op} with reduction {reduction}"
        if reduction == "none":
            if not self.shared.facts().is_zeros(ins[0]):
                return f"{op} overwriting data that is not provably zeros"
            self.overwrites = True
        z, u, out, t = ins[0], ins[2], node.outputs[0], g.type_of(node.outputs[0])
        self.steps.append(lambda: self._finish(out, self._add("Add", [self._aligned(z), self.dense[u]], t)))
        return None

    # ---- emission -------------------------------------------------------------------------------------
    def emit(self) -> None:
        for step in self.steps:
            step()

    def ratio(self) -> float | None:
        """num_experts / top_k of this layer, from the TopK feeding the mask."""
        g = self.g
        topk = _topk_of(g, self.source)
        if topk is None:
            return None
        e = (g.type_of(topk.inputs[0]).shape or [None])[-1]
        if not isinstance(e, int):  # unknown width: count the experts compared against `chosen`
            e = len({int(c.reshape(-1)[0]) for n in g.consumer_nodes(self.source) if n.op_type == "Equal"
                     for c in (const_value(g, i) for i in n.inputs if i != self.source)
                     if c is not None and c.size == 1})
        k = const_value(g, topk.inputs[1])
        if not e or k is None or k.size != 1 or int(k.reshape(-1)[0]) <= 0:
            return None
        return e / int(k.reshape(-1)[0])

    def _set(self, tensor: str, dense: str) -> None:
        self.dense[tensor] = dense

    def _finish(self, out: str, dense: str) -> None:
        self.g.replace_all_uses(out, dense)

    def _name(self, hint: str) -> str:
        return self.g.unique_name(f"{self.nz.name or 'nonzero'}/dense_{hint}".lstrip("/"))

    def _add(self, op: str, inputs: list[str], t: TensorType | None, **attrs) -> str:
        out = self._name(op.lower())
        self.g.add_node(op, inputs, [out], name=self.g.unique_node_name(out), attrs=attrs, types=[t])
        return out

    def _const(self, array: np.ndarray) -> str:
        return self.g.add_constant(array, hint=self._name("const"))

    def _rows_type(self, t: TensorType) -> TensorType:
        shape = t.shape
        if shape:
            shape = (_dim0(self.g, self.mask), *shape[1:])
        return TensorType(t.dtype, shape)

    def _clone(self, node: Node, kind: Kind) -> None:
        for o in node.outputs:
            if o:
                self.kind[o] = kind

        def step():
            inputs = [self.dense[i] if i in self.kind else i for i in node.inputs]
            outs = [self.g.unique_name(f"{o}_dense") if o else "" for o in node.outputs]
            types = [(self._rows_type(self.g.type_of(o)) if kind[0] == "rows" else self.g.type_of(o)) if o else None
                     for o in node.outputs]
            # the expert's nodes keep their names (+ "_dense"): explain, profiles and precision maps still read
            self.g.add_node(node.op_type, inputs, outs, name=self.g.unique_node_name(f"{node.name or outs[0]}_dense"),
                            domain=node.domain, attrs=dict(node.attrs), types=types)
            for o, new in zip(node.outputs, outs):
                if o:
                    self.dense[o] = new
        self.steps.append(step)

    def _count(self) -> str:
        """[T]: the number of tokens the mask covers, int64 of shape [1]."""
        key = self.source
        if key not in self.shared.count:
            i64 = TensorProto.INT64
            shape = self._add("Shape", [self.source], TensorType(i64, (2,)))
            self.shared.count[key] = self._add("Slice", [shape, self._const(np.array([0], np.int64)),
                                                         self._const(np.array([1], np.int64))], TensorType(i64, (1,)))
        return self.shared.count[key]

    def _aligned(self, x: str) -> str:
        """x itself when its first dim provably equals the mask's; else x reshaped to the mask's token
        count (a run-time check: the Reshape fails if the counts differ)."""
        g = self.g
        d, m = _dim0(g, x), _dim0(g, self.mask)
        if d is not None and d == m:
            return x
        key = (self.source, x)
        if key not in self.shared.aligned:
            i64 = TensorProto.INT64
            rank = _rank(g, x)
            dims = self._add("Shape", [x], TensorType(i64, (rank,) if rank else None))
            tail = self._add("Slice", [dims, self._const(np.array([1], np.int64)),
                                       self._const(np.array([INT64_MAX], np.int64))],
                             TensorType(i64, (rank - 1,) if rank else None))
            shape = self._add("Concat", [self._count(), tail], TensorType(i64, (rank,) if rank else None), axis=0)
            self.shared.aligned[key] = self._add("Reshape", [x, shape], self._rows_type(g.type_of(x)))
        return self.shared.aligned[key]

    def _gate(self, w: str, keepdims: bool) -> str:
        """sum over the top-k slots of where(mask, w, 0): the token's weight for this expert, or 0."""
        g = self.g
        wt = g.type_of(w)
        mask = self.mask
        if g.type_of(mask).dtype != TensorProto.BOOL:
            mask = self._add("Cast", [mask], TensorType(TensorProto.BOOL, g.type_of(mask).shape), to=TensorProto.BOOL)
        zero = self._const(np.zeros((), wt.np_dtype))
        picked = self._add("Where", [mask, w, zero], TensorType(wt.dtype, g.type_of(self.mask).shape))
        t = _dim0(g, self.mask)
        return self._add("ReduceSum", [picked, self._const(np.array([1], np.int64))],
                         TensorType(wt.dtype, (t, 1) if keepdims else (t,)), keepdims=int(keepdims))


# ---- helpers ------------------------------------------------------------------------------------------
def _axis(axis, rank: int) -> int | None:
    return None if axis is None else int(axis) % rank


def _axis0(g: Graph, node: Node) -> bool:
    """The node's `axis` (default 0) is axis 0 of its first input."""
    axis = int(node.attr("axis", 0))
    rank = _rank(g, node.inputs[0])
    return axis == 0 or (rank is not None and axis % rank == 0)


def _same_len(g: Graph, shape: str, x: str) -> bool:
    """The shape vector has as many elements as x has axes (Expand adds no leading axis)."""
    s, r = g.type_of(shape).shape, _rank(g, x)
    return bool(s) and r is not None and s[0] == r


def _rank(g: Graph, t: str) -> int | None:
    s = g.type_of(t).shape
    return None if s is None else len(s)


def _dim0(g: Graph, t: str):
    s = g.type_of(t).shape
    return s[0] if s else None


def _mask_source(g: Graph, mask: str) -> str:
    """`chosen` of mask = Equal(chosen, e) (e a constant scalar), else the mask itself."""
    p = g.producer(mask)
    while p is not None and p.op_type in ("Cast", "Identity"):
        mask, p = p.inputs[0], g.producer(p.inputs[0])
    if p is not None and p.op_type == "Equal":
        for a, b in (p.inputs, p.inputs[::-1]):
            c = const_value(g, b)
            if c is not None and c.size == 1:  # the mask has a's shape
                return a
    return mask


def _chain(g: Graph, chosen: str) -> tuple[Node | None, str, list[Node]]:
    """Walk back from `chosen` through Expand/Reshape/Cast/Identity: (the producer of the root or None,
    the root tensor, the ops from the root to `chosen` in order)."""
    t, ops = chosen, []
    for _ in range(16):
        p = g.producer(t)
        if p is None or p.op_type not in ("Expand", "Reshape", "Cast", "Identity"):
            return p, t, ops[::-1]
        ops.append(p)
        t = p.inputs[0]
    return None, t, []


def _topk_of(g: Graph, chosen: str) -> Node | None:
    p, t, _ = _chain(g, chosen)
    return p if p is not None and p.op_type == "TopK" and p.outputs[1] == t else None


def _distinct_rows(g: Graph, chosen: str) -> bool:
    """Whether every row (last axis) of `chosen` names each expert at most once: TopK's indices along
    its last axis, or a constant with distinct rows, then Expand (which cannot widen a last axis of size
    >= 2) and Reshapes, followed here by the size of the last axis."""
    p, t, ops = _chain(g, chosen)
    if p is not None and p.op_type == "TopK" and p.outputs[1] == t:
        rank = _rank(g, p.inputs[0])
        k = const_value(g, p.inputs[1])
        axis = int(p.attr("axis", -1))
        if not (axis == -1 or (rank is not None and axis % rank == rank - 1)) or k is None or k.size != 1:
            return False
        last = int(k.reshape(-1)[0])
    else:
        c = const_value(g, t)
        if c is None or c.ndim == 0 or any(len(set(r.tolist())) != len(r) for r in c.reshape(-1, c.shape[-1])):
            return False
        last = c.shape[-1]
    distinct = True
    for op in ops:
        if op.op_type not in ("Expand", "Reshape"):
            continue
        target = const_value(g, op.inputs[1])
        if op.op_type == "Expand":
            if last == 1:
                c = None if target is None or not target.size else int(target.reshape(-1)[-1])
                if c is None or c > 1:
                    distinct, last = False, c
            continue
        c = None if target is None or not target.size else int(target.reshape(-1)[-1])
        if c is None or c <= 0:
            return False
        distinct, last = (distinct, last) if c == last else (c == 1, c)
    return distinct and (g.type_of(chosen).shape or [None])[-1] in (last, None)


def _slice_component(g: Graph, node: Node, axis: int) -> str | None:
    """Which column of [n, 2] a Slice takes ("token" | "slot"), if exactly one along `axis`."""
    ins = node.inputs
    starts, ends = const_value(g, ins[1]), const_value(g, ins[2])
    axes = const_value(g, ins[3]) if len(ins) > 3 and ins[3] else np.arange(2)
    steps = const_value(g, ins[4]) if len(ins) > 4 and ins[4] else None
    if starts is None or ends is None or axes is None or (steps is not None and np.any(steps != 1)):
        return None
    axes = [int(a) % 2 for a in axes.reshape(-1)]
    if axes != [axis]:
        return None
    s, e = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    s = max(0, s + 2) if s < 0 else min(s, 2)
    e = max(0, e + 2) if e < 0 else min(e, 2)
    if e - s != 1:
        return None
    return ("token", "slot")[s]


def _relayout(g: Graph, node: Node, layout: str) -> str | None:
    """[n] <-> [n, 1] through Squeeze/Unsqueeze/Reshape; Identity/Cast keep the layout."""
    op = node.op_type
    if op in ("Identity", "Cast"):
        return layout
    if op == "Reshape":
        target = const_value(g, node.inputs[1])
        if target is None:
            return None
        t = [int(v) for v in target.reshape(-1)]
        return {(-1,): "vec", (-1, 1): "col"}.get(tuple(t))
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        a = const_value(g, node.inputs[1])
        axes = None if a is None else a.reshape(-1).tolist()
    if op == "Squeeze" and layout == "col" and axes is not None and [int(a) % 2 for a in axes] == [1]:
        return "vec"
    if op == "Unsqueeze" and layout == "vec" and axes is not None and [int(a) % 2 for a in axes] == [1]:
        return "col"
    return None


def _flattened(g: Graph, flat: Node | None) -> tuple[str | None, bool]:
    """(w, keepdims) when `flat` lays a rank-2 w out row-major as [T*k, 1] (keepdims) or [T*k]."""
    if flat is None:
        return None, False
    w = flat.inputs[0]
    if _rank(g, w) not in (2, None):
        return None, False
    if flat.op_type == "Flatten" and _rank(g, w) == 2 and node_axis(flat) == 2:
        return w, True
    if flat.op_type == "Reshape":
        target = const_value(g, flat.inputs[1])
        if target is not None and [int(v) for v in target.reshape(-1)] in ([-1], [-1, 1]):
            return w, target.size == 2
    return None, False


def node_axis(node: Node) -> int:
    return int(node.attr("axis", 1))


def _is_columns(g: Graph, m: str, w: str, mask: str) -> bool:
    """m equals w's column count: a constant equal to w's (or the mask's) static dim 1, or
    Gather(Shape(w), 1)."""
    c = const_value(g, m)
    if c is not None:
        cols = {(g.type_of(t).shape or [None, None])[1] for t in (w, mask) if _rank(g, t) == 2} - {None}
        return c.size == 1 and len(cols) == 1 and int(c.reshape(-1)[0]) in cols
    p = g.producer(m)
    if p is not None and p.op_type == "Gather":
        s, i = g.producer(p.inputs[0]), const_value(g, p.inputs[1])
        return s is not None and s.op_type == "Shape" and not s.attrs and s.inputs[0] in (w,) and i is not None \
            and i.size == 1 and int(i.reshape(-1)[0]) in (1, -1)
    return False


def _broadcasts(g: Graph, t: str, rank: int | None) -> bool:
    """A tensor that does not depend on the dispatch broadcasts over the token axis (axis 0 of a
    rank-`rank` operand): lower rank, or size 1 there. Unknown shapes are taken to broadcast (the
    original graph could not work for every token count otherwise)."""
    s = g.type_of(t).shape
    if s is None or rank is None or len(s) < rank:
        return True
    return len(s) == rank and s[0] in (1, None)


def _keeps_axis0(g: Graph, node: Node, rank: int | None) -> bool:
    op = node.op_type
    if op == "Transpose":
        perm = node.attr("perm")
        return perm is not None and perm[0] == 0
    if op == "Flatten":
        return rank is not None and _axis(node.attr("axis", 1), rank + 1 if rank else 1) not in (0,)
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        a = const_value(g, node.inputs[1])
        axes = None if a is None else a.reshape(-1).tolist()
    if axes is None:
        return False
    if op == "Unsqueeze":
        out_rank = None if rank is None else rank + len(axes)
        return all(a > 0 for a in axes) or (out_rank is not None and all(a % out_rank != 0 for a in axes))
    return all(a > 0 for a in axes) or (rank is not None and all(a % rank != 0 for a in axes))


def _reshape_keeps_rows(g: Graph, node: Node) -> str | None:
    target = const_value(g, node.inputs[1])
    if target is None:
        return "Reshape of expert rows to a shape not computed from the token count"
    t = [int(v) for v in target.reshape(-1)]
    src = g.type_of(node.inputs[0]).shape
    if not t or t[0] not in (-1, 0) or any(d <= 0 for d in t[1:]) or (t[0] == 0 and node.attr("allowzero", 0)):
        return "Reshape that does not keep the token axis first"
    if src is None or not all(isinstance(d, int) for d in src[1:]):
        return "Reshape of expert rows whose row size is unknown"
    if int(np.prod(src[1:], dtype=np.int64)) != int(np.prod(t[1:], dtype=np.int64)):
        return "Reshape that mixes tokens"
    return None


def _expand_keeps_rows(g: Graph, node: Node) -> str | None:
    s = g.type_of(node.inputs[1]).shape
    rank = _rank(g, node.inputs[0])
    if s is None or not isinstance(s[0], int) or rank is None or s[0] > rank:
        return "Expand that may add axes before the token axis"
    c = const_value(g, node.inputs[1])
    if c is not None and c.size == rank and int(c.reshape(-1)[0]) not in (1, -1):
        return "Expand of the token axis to a fixed size"
    return None


def _same_trailing(g: Graph, data: str, updates: str) -> str | None:
    """ScatterElements may write a block smaller than data; Add must not broadcast a smaller block."""
    ds, us = g.type_of(data).shape, g.type_of(updates).shape
    if us is None or not all(isinstance(d, int) for d in us[1:]):
        return "ScatterElements updates of unknown row size"
    if ds is not None and len(ds) == len(us) and all(isinstance(d, int) for d in ds[1:]):
        return None if list(ds[1:]) == list(us[1:]) else "ScatterElements writing part of each row"
    if any(d == 1 for d in us[1:]):
        return "ScatterElements updates with a size-1 axis and data of unknown shape"
    return None  # static sizes > 1: Add either matches data's row or fails, never broadcasts


PASSES = [DenseMoEDispatch]

"""Removing experts whose token dispatch is provably empty, once the router's indices are constants.

Sparse MoE exports dispatch like torch's `token, slot = where(chosen == e); out.index_add(...)`:
NonZero(Equal(chosen, e)) -> Gather tokens -> expert -> ScatterElements/ScatterND into zeros -> Add.
With `chosen` a constant that never names expert e, Equal(...) is all False whatever the token count,
NonZero is empty, the scatter writes nothing and the Add adds zeros. Three facts prove it, tracked
per tensor in one forward pass, independent of dynamic shapes:

- value set: every element lies in a small known set (constants, ConstantOfShape, and what
  shape-moving and elementwise ops make of them);
- empty: the tensor has no elements (NonZero of all-zero, and ops that keep a zero-sized dim);
- shape key: two tensors with the same key have the same runtime shape (ConstantOfShape(Shape(x)),
  a scatter's output and its data, elementwise ops of equal-shaped inputs).
Rewrites: a scatter with empty indices -> its data; Add(x, zeros of x's shape) -> x. DCE then drops
the expert and its weights. Exact: no value changes (x + 0 == x).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from vidcc.ir import Graph, Node

MAX_SET = 16
KEEP_VALUES = {"Identity", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Slice", "Gather",
               "GatherElements", "GatherND", "Tile", "Split", "ReduceMax", "ReduceMin"}
# ops whose outputs are empty when their first input is (a zero-sized dim survives them)
KEEP_EMPTY = {"Identity", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Split", "Slice", "Cast",
              "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Not"}
BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Greater": np.greater,
          "Less": np.less, "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
          "And": np.logical_and, "Or": np.logical_or}
UNARY = {"Not": np.logical_not, "Neg": np.negative, "Abs": np.abs}
SAME_SHAPE_UNARY = {"Identity", "Cast", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Not"}
SCATTERS = {"ScatterElements", "ScatterND"}


def _values(arr: np.ndarray) -> frozenset | None:
    if arr.size == 0 or arr.size > 1 << 20:
        return None
    u = np.unique(arr)
    return frozenset(u.tolist()) if u.size <= MAX_SET else None


def _constant_node_value(node: Node) -> np.ndarray | None:
    a = node.attrs.get("value")
    if a is not None:
        return numpy_helper.to_array(a.t)
    for key in ("value_float", "value_int", "value_floats", "value_ints"):
        if key in node.attrs:
            return np.asarray(node.attr(key))
    return None


class Facts:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.vs: dict[str, frozenset] = {}
        self.empty: set[str] = set()
        self.key: dict[str, str] = {}
        for name in graph.constants:
            c = graph.constants[name]
            if c.size <= 1 << 20 and not c.is_external:
                v = _values(c.array)
                if v is not None:
                    self.vs[name] = v
                if c.size == 0:
                    self.empty.add(name)
        for node in graph.toposort():
            self._visit(node)

    def k(self, t: str) -> str:
        return self.key.get(t, t)

    def _visit(self, n: Node) -> None:
        op, ins, outs = n.op_type, n.inputs, n.outputs
        if n.domain not in ("", "ai.onnx") or not outs:
            return
        x = ins[0] if ins else ""
        if op == "Constant":
            arr = _constant_node_value(n)
            if arr is not None:
                if (v := _values(arr)) is not None:
                    self.vs[outs[0]] = v
                if arr.size == 0:
                    self.empty.add(outs[0])
        elif op == "ConstantOfShape":
            a = n.attrs.get("value")
            self.vs[outs[0]] = frozenset(numpy_helper.to_array(a.t).reshape(-1).tolist()) if a is not None else frozenset([0.0])
            p = self.graph.producer(x)
            if p is not None and p.op_type == "Shape" and not p.attrs:
                self.key[outs[0]] = self.k(p.inputs[0])
        elif op in KEEP_VALUES and x in self.vs:
            for o in outs:
                self.vs[o] = self.vs[x]
        elif op == "Concat" and all(i in self.vs for i in ins if i):
            self.vs[outs[0]] = frozenset().union(*(self.vs[i] for i in ins if i))
        elif op == "Cast" and x in self.vs:
            to = self.graph.type_of(outs[0]).np_dtype if self.graph.type_of(outs[0]).dtype else None
            if to is not None:
                self.vs[outs[0]] = frozenset(np.asarray(list(self.vs[x])).astype(to).tolist())
        elif op in UNARY and x in self.vs:
            self.vs[outs[0]] = frozenset(UNARY[op](np.asarray(list(self.vs[x]))).tolist())
        elif op in BINARY and len(ins) == 2 and ins[0] in self.vs and ins[1] in self.vs:
            a, b = self.vs[ins[0]], self.vs[ins[1]]
            if len(a) * len(b) <= MAX_SET * MAX_SET:
                got = {BINARY[op](np.asarray(p), np.asarray(q)).item() for p in a for q in b}
                if len(got) <= MAX_SET:
                    self.vs[outs[0]] = frozenset(got)
        elif op == "Where" and ins[0] in self.vs:
            c = self.vs[ins[0]]
            picks = ([ins[1]] if True in c or 1 in c else []) + ([ins[2]] if False in c or 0 in c else [])
            if all(p in self.vs for p in picks):
                self.vs[outs[0]] = frozenset().union(*(self.vs[p] for p in picks))

        if op == "NonZero" and self.vs.get(x) is not None and all(not v for v in self.vs[x]):
            self.empty.add(outs[0])
        elif op in KEEP_EMPTY and x in self.empty:
            self.empty.update(o for o in outs if o)
        elif op == "Gather" and len(ins) > 1 and (ins[1] in self.empty or x in self.empty):
            self.empty.add(outs[0])  # data empty off the axis stays empty; on the axis no index is valid
        elif op == "GatherElements" and len(ins) > 1 and ins[1] in self.empty:
            self.empty.add(outs[0])
        elif op in BINARY and any(i in self.empty for i in ins):
            self.empty.add(outs[0])  # broadcasting a zero-sized dim gives a zero-sized dim

        if op in SCATTERS:
            self.key[outs[0]] = self.k(x)
        elif op in SAME_SHAPE_UNARY and x:
            self.key[outs[0]] = self.k(x)
        elif op in BINARY and len(ins) == 2 and self.k(ins[0]) == self.k(ins[1]):
            self.key[outs[0]] = self.k(ins[0])

    def is_zeros(self, t: str) -> bool:
        v = self.vs.get(t)
        return v is not None and all(x == 0 for x in v)


def prune_empty_dispatch(graph: Graph) -> int:
    """Apply the two rewrites until none applies; returns how many were made (DCE is the caller's)."""
    done = 0
    for _ in range(64):
        facts = Facts(graph)
        changed = 0
        for node in graph.nodes_by_op("ScatterElements") + graph.nodes_by_op("ScatterND"):
            if node.inputs[1] in facts.empty and _writes_nothing(graph, node):
                out, data = node.outputs[0], node.inputs[0]
                graph.remove_node(node, keep_types=True)
                graph.replace_all_uses(out, data)
                changed += 1
        for node in graph.nodes_by_op("Add"):
            a, b = node.inputs
            keep = a if facts.is_zeros(b) else b if facts.is_zeros(a) else None
            if keep is None or facts.k(a) != facts.k(b):
                continue
            out = node.outputs[0]
            graph.remove_node(node, keep_types=True)
            graph.replace_all_uses(out, keep)
            changed += 1
        if not changed:
            break
        done += changed
    return done


def _writes_nothing(graph: Graph, node: Node) -> bool:
    """Empty indices write nothing, except ScatterND indices [..., 0], which address the whole data:
    require ScatterND's last indices dim to be a known nonzero size."""
    if node.op_type == "ScatterElements":
        return True
    shape = graph.type_of(node.inputs[1]).shape
    return bool(shape) and isinstance(shape[-1], int) and shape[-1] > 0

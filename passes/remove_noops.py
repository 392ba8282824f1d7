"""No-op shape and arithmetic ops, and chains of reshapes/transposes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcc.ir import Graph, Node
from vidcc.pass_manager import Pass, PassContext, PassResult

from ._fusion import reshape_target, scalar, static

_IDENTITY_OF = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


@dataclass(frozen=True)
class RemoveNoops(Pass):
    """Remove ops that do nothing, and collapse chains that do one thing.

    Rewrite cases:
    - Expand(x, s) where every dim of s is 1 or x's own (static) dim, and s has no more dims than x;
    - Reshape(x, s) to x's own static shape; Reshape(Reshape(x, a), b) -> Reshape(x, b) (b without 0s);
    - Transpose with the identity perm; Transpose(Transpose(x, p), q) -> one Transpose (or none);
    - Slice that keeps every element (static dims), Concat/Split of one part;
    - x * 1, x / 1, x + 0, x - 0 with a scalar constant that does not broadcast x to a larger shape
      (floating point: x + 0 turns -0.0 into +0.0, equal as a number);
    readers of the removed node's output read x (a graph output keeps its name).
    """

    name = "remove-noops"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, int] = {}
        for node in graph.toposort():
            if node.id not in graph.nx or node.domain not in ("", "ai.onnx"):
                continue
            what = simplify_node(graph, node)
            if what:
                stats[what] = stats.get(what, 0) + 1
        return PassResult(bool(stats), stats)


def simplify_node(graph: Graph, node: Node) -> str | None:
    op = node.op_type
    x = node.inputs[0] if node.inputs else ""
    xs = graph.type_of(x).shape if x else None
    if op == "Expand" and graph.is_constant(node.inputs[1]) and xs is not None:
        s = [int(d) for d in graph.constant(node.inputs[1]).reshape(-1)]
        aligned = list(xs[len(xs) - len(s):]) if len(s) <= len(xs) else None
        if aligned is not None and all(d == 1 or d == a for d, a in zip(s, aligned)):
            return _bypass(graph, node, x, "Expand")
    elif op == "Reshape":
        target = reshape_target(graph, node)
        if target is not None and static(xs) and _resolved(target, xs) == list(xs):
            return _bypass(graph, node, x, "Reshape")
        inner = graph.producer(x)
        if inner is not None and inner.op_type == "Reshape" and graph.is_constant(node.inputs[1]) \
                and 0 not in graph.constant(node.inputs[1]).reshape(-1).tolist() and _only_reader(graph, inner, node):
            graph.set_input(node, 0, inner.inputs[0])
            _drop_if_dead(graph, inner)
            return "Reshape chain"
    elif op == "Transpose":
        perm = node.attr("perm")
        if perm is not None and list(perm) == list(range(len(perm))):
            return _bypass(graph, node, x, "Transpose")
        inner = graph.producer(x)
        if perm is not None and inner is not None and inner.op_type == "Transpose" and inner.attr("perm") is not None \
                and _only_reader(graph, inner, node):
            first = list(inner.attr("perm"))
            combined = [first[p] for p in perm]
            graph.set_input(node, 0, inner.inputs[0])
            graph.set_attr(node, "perm", combined)
            _drop_if_dead(graph, inner)
            if combined == list(range(len(combined))):
                _bypass(graph, node, node.inputs[0], "Transpose")
            return "Transpose chain"
    elif op == "Slice" and static(xs) and all(graph.is_constant(i) for i in node.inputs[1:] if i):
        if _full_slice(graph, node, xs):
            return _bypass(graph, node, x, "Slice")
    elif op in ("Concat", "Split") and len([i for i in node.inputs if i]) == 1 and len(node.outputs) == 1:
        return _bypass(graph, node, x, op)
    elif op in _IDENTITY_OF and len(node.inputs) == 2:
        for k in ((0, 1) if op in ("Mul", "Add") else (1,)):
            c, other = node.inputs[k], node.inputs[1 - k]
            v = scalar(graph, c) if graph.is_constant(c) else None
            if v != _IDENTITY_OF[op]:
                continue
            ot, ct = graph.type_of(other), graph.type_of(c)
            if ot.dtype != ct.dtype or ot.shape is None or len(ct.shape or ()) > len(ot.shape):
                continue  # a constant of higher rank would broadcast x to a larger shape
            if any(d != 1 for d in (ct.shape or ())) and not static(ot.shape):
                continue
            if ct.shape and static(ot.shape) and np.broadcast_shapes(tuple(ot.shape), tuple(ct.shape)) != tuple(ot.shape):
                continue
            return _bypass(graph, node, other, f"{op} by {_IDENTITY_OF[op]:g}")
    return None


def _resolved(target: list, xs) -> list | None:
    if any(d is None for d in target):
        return None
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        total = int(np.prod(xs))
        if known == 0 or total % known:
            return None
        target = [total // known if d == -1 else d for d in target]
    return [int(d) for d in target]


def _full_slice(graph: Graph, node: Node, xs) -> bool:
    args = [graph.constant(i).reshape(-1).tolist() if i else None for i in node.inputs[1:]] + [None] * 4
    starts, ends, axes, steps = args[0], args[1], args[2], args[3]
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = xs[a % len(xs)]
        if st != 1 or (s % dim if s < 0 else s) != 0 or (e if e >= 0 else e + dim) < dim:
            return False
    return True


def _only_reader(graph: Graph, inner: Node, node: Node) -> bool:
    return inner.outputs[0] not in graph.outputs and all(u is node for u in graph.consumer_nodes(inner.outputs[0]))


def _drop_if_dead(graph: Graph, node: Node) -> None:
    if node.id in graph.nx and not any(graph.is_used(o) for o in node.outputs if o):
        graph.remove_node(node)


def _bypass(graph: Graph, node: Node, src: str, what: str) -> str | None:
    out = node.outputs[0]
    if out in graph.outputs and (graph.producer(src) is None or src in graph.outputs or src in graph.inputs):
        return None  # the output name needs a node to carry it
    graph.replace_all_uses(out, src)
    _drop_if_dead(graph, node)
    return what


PASSES = [RemoveNoops]

"""Common subexpression elimination."""

from __future__ import annotations

from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult

_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same thing.

    Rewrite cases:
    - two nodes with the same op, domain, attributes and inputs (in order): readers of the later one
      read the earlier one's outputs (a graph output keeps its name);
    - applied in topological order, so whole duplicated chains (e.g. the same Shape->Gather->Unsqueeze
      bookkeeping repeated per layer, or the same Sqrt of a scale) collapse in one run;
    - not merged: random ops, nodes with subgraphs, nodes without inputs (Constant nodes: fold and
      dedup-constants handle those).
    """

    name = "cse"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        seen: dict[tuple, object] = {}
        merged = 0
        for node in graph.toposort():
            if node.op_type in _NONDETERMINISTIC or node.has_subgraphs() or not node.inputs:
                continue
            attrs = tuple(sorted((k, a.SerializeToString(deterministic=True)) for k, a in node.attrs.items()))
            key = (node.domain or "", node.op_type, tuple(node.inputs), len(node.outputs), attrs)
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            for old, new in zip(node.outputs, first.outputs):
                if old and graph.is_used(old):
                    if not new:
                        break
                    graph.replace_all_uses(old, new)
            if not any(graph.is_used(o) for o in node.outputs if o):
                graph.remove_node(node)
                merged += 1
        return PassResult(bool(merged), {"merged": merged} if merged else {})


PASSES = [CommonSubexpressionElimination]

"""verify(graph): the IR's invariants. Each error names the node and the rule it broke."""

from __future__ import annotations

import networkx as nx

from vidcc.errors import VerifyError
from vidcc.ir.graph import IMPLICIT, Graph


def verify(graph: Graph, *, require_types: bool = True) -> None:
    """Raise VerifyError on the first broken rule."""
    errors = problems(graph, require_types=require_types, first_only=True)
    if errors:
        raise VerifyError(errors[0])


def problems(graph: Graph, *, require_types: bool = True, first_only: bool = False) -> list[str]:
    found: list[str] = []

    def bad(msg: str) -> bool:
        found.append(msg)
        return first_only

    sources = set(graph.inputs) | set(graph.constants)
    producers: dict[str, str] = {}
    for node in graph.nodes:
        for out in node.outputs:
            if not out:
                continue
            if out in sources:
                if bad(f"node {node.label}: output '{out}' is also a graph input or constant (rule: one producer per tensor)"):
                    return found
            if out in producers:
                if bad(f"node {node.label}: output '{out}' is also produced by {producers[out]} (rule: one producer per tensor)"):
                    return found
            producers[out] = node.label

    if not nx.is_directed_acyclic_graph(graph.nx):
        cycle = nx.find_cycle(graph.nx)
        names = " -> ".join(graph.node(u).label for u, *_ in cycle)
        if bad(f"node {graph.node(cycle[0][0]).label}: graph has a cycle ({names}) (rule: acyclic)"):
            return found

    known = sources | set(producers)
    for node in graph.nodes:
        edges_in = {(d["tensor"], d["dst_slot"]) for _, _, d in graph.nx.in_edges(node.id, data=True)}
        for slot, name in enumerate(node.inputs):
            if not name:
                continue
            if name not in known:
                if bad(f"node {node.label}: input {slot} '{name}' is produced by no node, input or constant (rule: no dangling uses)"):
                    return found
            elif name in producers and (name, slot) not in edges_in:
                if bad(f"node {node.label}: input {slot} '{name}' has no edge from its producer (rule: dense input slots)"):
                    return found
        for name in node.implicit_inputs:
            if name not in known and bad(f"node {node.label}: subgraph reads '{name}', which nothing produces (rule: no dangling uses)"):
                return found
        for tensor, slot in edges_in:
            expected = tensor in node.implicit_inputs if slot == IMPLICIT else (
                0 <= slot < len(node.inputs) and node.inputs[slot] == tensor)
            if not expected and bad(f"node {node.label}: edge for '{tensor}' at slot {slot} does not match its inputs (rule: dense input slots)"):
                return found
        if require_types:
            for out in node.outputs:
                if out and not graph.type_of(out).dtype:
                    if bad(f"node {node.label}: output '{out}' has no known dtype (rule: dtype known for every tensor)"):
                        return found

    for name in graph.inputs:
        if require_types and not graph.type_of(name).dtype and bad(f"graph input '{name}' has no known dtype (rule: dtype known for every tensor)"):
            return found
    for name in graph.outputs:
        if name not in known and bad(f"graph output '{name}' is produced by no node, input or constant (rule: outputs produced)"):
            return found
    return found

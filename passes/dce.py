"""Dead-code elimination and Identity removal."""

from __future__ import annotations

from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes none of whose outputs reach a graph output, and constants nobody reads.

    Rewrite cases:
    - a node whose outputs have no consumers and are not graph outputs is removed (repeatedly);
    - nodes with subgraphs are removed only when their outputs are unused, like any other.
    """

    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = 0
        worklist = list(reversed(graph.toposort()))
        while worklist:
            node = worklist.pop(0)
            if node.id not in graph.nx or any(graph.is_used(o) for o in node.outputs if o):
                continue
            preds = graph.predecessors(node)
            graph.remove_node(node)
            removed += 1
            worklist.extend(preds)
        dead_consts = graph.remove_unused_constants()
        return PassResult(bool(removed or dead_consts), {"nodes_removed": removed, "constants_removed": len(dead_consts)})


@dataclass(frozen=True)
class RemoveIdentity(Pass):
    """Remove Identity nodes (and Dropout in inference mode without a mask output in use).

    Rewrite cases:
    - y = Identity(x): readers of y read x; a graph output y keeps its name;
    - y = Dropout(x) with no used mask output: the same.
    """

    name = "remove-identity"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = 0
        for node in graph.nodes_by_op("Identity") + graph.nodes_by_op("Dropout"):
            if node.op_type == "Dropout" and (len(node.outputs) > 1 and node.outputs[1] and graph.is_used(node.outputs[1])):
                continue
            src, out = node.inputs[0], node.outputs[0]
            if out in graph.outputs:
                # keep the output's name: the producer of src writes it directly
                p = graph.producer_slot(src)
                if p is None or src in graph.outputs or len(graph.consumers(src)) > 1:
                    continue
                graph.remove_node(node, keep_types=True)
                graph.rename_output(p[0], p[1], out)
            else:
                graph.replace_all_uses(out, src)
                graph.remove_node(node)
            removed += 1
        return PassResult(bool(removed), {"removed": removed})


PASSES = [DeadCodeElimination, RemoveIdentity]

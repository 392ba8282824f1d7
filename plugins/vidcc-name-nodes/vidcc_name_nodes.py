"""A third-party vidcc plugin: the `name-nodes` pass.

Exporters leave many nodes unnamed, which makes explain/diff output and TensorRT layer names hard to
read. `name-nodes` names each unnamed node `<prefix><op>_<first output>` (stable across runs, since it
depends only on the graph) and can rename all nodes with `all=true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vidcc.hookspecs import hookimpl
from vidcc.pass_manager import Pass, PassResult


@dataclass(frozen=True)
class NameNodes(Pass):
    """Give unnamed nodes stable names derived from their op type and first output.

    Rewrite cases:
    - a node with an empty name gets `<prefix><op_type>_<output>`;
    - with all=true, every node is renamed that way;
    - names are made unique with a numeric suffix.
    """

    name = "name-nodes"
    prefix: str = ""
    all: bool = False

    def run(self, graph, ctx) -> PassResult:
        renamed = 0
        for node in graph.toposort():
            if node.name and not self.all:
                continue
            stem = re.sub(r"[^A-Za-z0-9_./-]", "_", node.outputs[0] if node.outputs else str(node.id))
            node.name = graph.unique_node_name(f"{self.prefix}{node.op_type}_{stem}")
            renamed += 1
        return PassResult(bool(renamed), {"renamed": renamed})


@hookimpl
def vidcc_register_passes(register):
    register(NameNodes)

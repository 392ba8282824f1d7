"""Inlining an If node's branch into the enclosing graph (used when its condition is known)."""

from __future__ import annotations

from pathlib import Path

import onnx

from vidcc.ir import Graph, Node
from vidcc.ir.graph import rename_in_subgraphs, subgraph_outer_names
from vidcc.ir.tensor import Constant
from vidcc.onnx_io import _type_of


def inline_branch(graph: Graph, node: Node, branch: onnx.GraphProto) -> int:
    """Replace `node` (an If) by the nodes of `branch`; readers of its outputs read the branch's.
    Names the branch defines are renamed only where they clash with the graph's. Returns nodes added."""
    if branch.sparse_initializer:
        raise ValueError(f"{node.label}: branch has sparse initializers")
    taken = graph.tensor_names() | set(graph.io_meta)  # computed once: unique_name() rescans per call
    rename: dict[str, str] = {}

    def fresh(name: str) -> str:
        new, i = name, 0
        while new in taken:
            i += 1
            new = f"{name}_{i}"
        taken.add(new)
        rename[name] = new
        return new

    for init in branch.initializer:
        proto = onnx.TensorProto()
        proto.CopyFrom(init)
        proto.name = fresh(init.name)
        graph.constants[proto.name] = Constant.from_proto(proto, Path("."))
    for n in branch.node:
        for out in n.output:
            if out:
                fresh(out)
    types = {vi.name: _type_of(vi) for vi in list(branch.value_info) + list(branch.output)
             if vi.type.HasField("tensor_type")}

    for n in branch.node:
        tmp = Node(-1, n.op_type, attrs={a.name: a for a in n.attribute})
        renamed_outer = set(subgraph_outer_names(tmp)) & rename.keys() if tmp.has_subgraphs() else ()
        for old in renamed_outer:
            if rename[old] != old:
                rename_in_subgraphs(tmp, old, rename[old])
        outs = [rename.get(o, o) if o else "" for o in n.output]
        graph.add_node(n.op_type, [rename.get(i, i) if i else "" for i in n.input], outs,
                       name=graph.unique_node_name(n.name) if n.name else "", domain=n.domain, attrs=tmp.attrs,
                       types=[types.get(o) for o in n.output], doc_string=n.doc_string,
                       metadata={p.key: p.value for p in n.metadata_props})

    results = [rename.get(o.name, o.name) for o in branch.output]
    if_outputs = list(node.outputs)
    graph.remove_node(node, keep_types=True)
    for old, new in zip(if_outputs, results):
        if not old:
            continue
        t = graph.types.get(old)
        if t is not None and not graph.type_of(new).dtype:
            graph.types[new] = t
        graph.replace_all_uses(old, new)
        if old not in graph.outputs:
            graph.types.pop(old, None)
    return len(branch.node)

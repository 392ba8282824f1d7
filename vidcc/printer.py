"""The IR as text: one line per node, in topological order (for --print-ir, IR dumps and tests)."""

from __future__ import annotations

from vidcc.ir import Graph


def format_graph(graph: Graph, *, max_attr_len: int = 60) -> str:
    lines = [f"graph {graph.name}("]
    lines += [f"    %{name}: {graph.type_of(name)}" for name in graph.inputs]
    lines.append(f") -> ({', '.join('%' + o for o in graph.outputs)})")
    for name, c in graph.constants.items():
        lines.append(f"  const %{name}: {c.type}")
    for node in graph.toposort():
        outs = ", ".join(f"%{o}: {graph.type_of(o)}" if o else "_" for o in node.outputs)
        ins = ", ".join(f"%{i}" if i else "_" for i in node.inputs)
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        attrs = ", ".join(f"{k}={_short(node.attr(k), max_attr_len)}" for k in sorted(node.attrs))
        prec = f" @{node.precision}" if node.precision else ""
        name = f"  # {node.name}" if node.name else ""
        lines.append(f"  {outs} = {op}{'{' + attrs + '}' if attrs else ''}({ins}){prec}{name}")
    return "\n".join(lines) + "\n"


def _short(value, limit: int) -> str:
    if hasattr(value, "node"):  # a GraphProto
        return f"<graph {value.name}: {len(value.node)} nodes>"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."

"""Size and cost of a graph: op histogram, parameters, bytes, MACs/FLOPs, precision map."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from vidcc.ir import Graph, Node


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def node_macs(graph: Graph, node: Node) -> int | None:
    """Multiply-accumulates of one node from its tensor shapes; None when a shape is not static."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w, y = graph.type_of(node.inputs[1]).shape, graph.type_of(node.outputs[0]).shape
        x = graph.type_of(node.inputs[0]).shape
        if not (_static(w) and _static(y) and _static(x)):
            return None
        if op == "Conv":  # each output element: Cin/group * prod(kernel)
            return int(np.prod(y)) * int(np.prod(w[1:]))
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if op in ("MatMul", "Gemm", "FusedMatMul"):
        a, y = graph.type_of(node.inputs[0]).shape, graph.type_of(node.outputs[0]).shape
        if not (_static(a) and _static(y)) or not a:
            return None
        k = a[-1] if not (op == "Gemm" and node.attr("transA", 0)) else a[0]
        return int(np.prod(y)) * int(k)
    if op in ("Attention", "MultiHeadAttention") and len(node.inputs) >= 3:
        q, k = graph.type_of(node.inputs[0]).shape, graph.type_of(node.inputs[1]).shape
        if not (_static(q) and _static(k)) or len(q) < 3:
            return None
        # QK^T and PV: 2 * B * Sq * Sk * hidden
        return 2 * int(np.prod(q)) * int(k[-2] if len(k) == 4 else k[1])
    return 0


def total_macs(types, nodes) -> tuple[int, int]:
    """(MACs, nodes of unknown cost); `types` answers type_of() (a Graph, or a view with shape hints)."""
    total, unknown = 0, 0
    for node in nodes:
        m = node_macs(types, node)
        if m is None:
            unknown += 1
        else:
            total += m
    return total, unknown


def summarize(graph: Graph) -> dict[str, Any]:
    params = sum(c.size for c in graph.constants.values() if c.dtype in _FLOAT_TYPES)
    weight_bytes = sum(c.nbytes for c in graph.constants.values())
    macs, unknown = total_macs(graph, graph.nodes)
    precision = Counter(n.precision or "unassigned" for n in graph.nodes)
    return {
        "nodes": len(graph),
        "ops": dict(sorted(graph.op_histogram().items(), key=lambda kv: (-kv[1], kv[0]))),
        "params": int(params),
        "weight_bytes": int(weight_bytes),
        "constants": len(graph.constants),
        "macs": int(macs),
        "flops": int(2 * macs),
        "nodes_with_unknown_cost": unknown,
        "precision": dict(sorted(precision.items())),
        "inputs": {n: str(graph.type_of(n)) for n in graph.inputs},
        "outputs": {n: str(graph.type_of(n)) for n in graph.outputs},
    }


_FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16


def bind_input_shapes(graph: Graph, feeds: dict[str, np.ndarray]) -> Graph:
    """A copy specialized to the feeds' static shapes, for cost counting: inputs bound, shape
    subgraphs folded (so the Reshapes around attention get static shapes and their MatMuls a cost),
    types re-inferred."""
    from vidcc.pass_manager import PassContext, run_pipeline

    g = graph.copy()
    shapes = ",".join(f"{k}:{'x'.join(map(str, np.shape(v)))}" for k, v in feeds.items()
                      if k in g.inputs and np.ndim(v))
    run_pipeline(g, f"infer-shapes{{shapes=[{shapes}]}},fold-constants,infer-shapes", PassContext())
    return g

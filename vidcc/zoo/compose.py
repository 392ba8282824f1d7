"""Join two exported expert graphs into one model that picks an expert with an ONNX If.

    select = Gather(timestep, 0)                      # the pipeline's timesteps are equal across batch
    use_then = GreaterOrEqual(select, boundary)
    out = If(use_then, then_branch=expert A, else_branch=expert B)

The experts' weights are lifted into the main graph (torch's own torch.cond exports do the same) and
both branches read the main graph's inputs from the outer scope. Pure onnx, no torch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> tuple[onnx.GraphProto, list]:
    """Copy `graph` with every value, node and initializer name prefixed, except the names in `keep`."""
    def rename(name: str) -> str:
        return name if (not name or name in keep) else f"{prefix}{name}"

    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ValueError(f"expert graph has a subgraph at node {node.name}; not supported")
    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = rename(node.name) if node.name else ""
        new.input[:] = [rename(n) for n in node.input]
        new.output[:] = [rename(n) for n in node.output]
        nodes.append(new)
    initializers = []
    for init in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = rename(init.name)
        initializers.append(new)
    value_info = []
    for vi in list(graph.value_info) + list(graph.output):
        new = onnx.ValueInfoProto()
        new.CopyFrom(vi)
        new.name = rename(vi.name)
        value_info.append(new)
    outputs = value_info[len(graph.value_info):]
    body = helper.make_graph(nodes, prefix.rstrip("."), inputs=[], outputs=outputs,
                             value_info=value_info[:len(graph.value_info)])
    return body, initializers


def if_of_experts(then_model: onnx.ModelProto, else_model: onnx.ModelProto, selector: str,
                  boundary: float, *, then_name: str, else_name: str) -> onnx.ModelProto:
    """One model: `then_model` when selector[0] >= boundary, else `else_model`. Inputs/outputs must agree."""
    a, b = then_model.graph, else_model.graph
    if [i.name for i in a.input] != [i.name for i in b.input] or \
            [o.name for o in a.output] != [o.name for o in b.output]:
        raise ValueError("experts must have the same graph inputs and outputs")
    if then_model.functions or else_model.functions:
        raise ValueError("expert graphs must not use local functions")
    keep = {i.name for i in a.input}
    then_body, then_inits = _prefixed(a, f"{then_name}.", keep)
    else_body, else_inits = _prefixed(b, f"{else_name}.", keep)

    select_dtype = next(i.type.tensor_type.elem_type for i in a.input if i.name == selector)
    np_dtype = helper.tensor_dtype_to_np_dtype(select_dtype)
    consts = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "expert_select_index"),
        numpy_helper.from_array(np.array(boundary, dtype=np_dtype), "expert_boundary"),
    ]
    nodes = [
        helper.make_node("Gather", [selector, "expert_select_index"], ["expert_select_value"],
                         name="expert_select", axis=0),
        helper.make_node("GreaterOrEqual", ["expert_select_value", "expert_boundary"], ["expert_use_" + then_name],
                         name="expert_compare"),
        helper.make_node("If", ["expert_use_" + then_name], [o.name for o in a.output], name="expert_switch",
                         then_branch=then_body, else_branch=else_body),
    ]
    graph = helper.make_graph(nodes, "wan22_moe", inputs=list(a.input), outputs=list(a.output),
                              initializer=consts + then_inits + else_inits)
    model = helper.make_model(graph, opset_imports=list(then_model.opset_import),
                              producer_name=then_model.producer_name, producer_version=then_model.producer_version)
    model.ir_version = then_model.ir_version  # helper would write the newest IR version; ORT may refuse it
    return model

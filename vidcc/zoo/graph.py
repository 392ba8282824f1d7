"""Post-export touch-ups shared by both exporters (pure onnx).

- checks the graph's inputs and outputs are exactly the names the zoo promises;
- writes every graph input/output dim: the symbolic name (frames/height/width) on dynamic axes, the
  sample's size elsewhere. The exporters otherwise leave names like `Transposeout_dim_0` (legacy) or
  `2*(((height - 1)//2)) + 2` (dynamo) on outputs, which equal the input dims for valid shapes;
- records where the model came from in metadata_props (`vidcc.zoo.*`).
"""

from __future__ import annotations

from collections import Counter

import onnx


def _set_shape(value: onnx.ValueInfoProto, shape, axes: dict[int, str]) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for axis, size in enumerate(shape):
        dim = dims.add()
        if axis in axes:
            dim.dim_param = axes[axis]
        else:
            dim.dim_value = int(size)


def count_nodes(graph: onnx.GraphProto) -> Counter:
    ops: Counter = Counter()
    for node in graph.node:
        ops[node.op_type] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops.update(count_nodes(sub))
    return ops


def finalize(model: onnx.ModelProto, built, reference: dict, info: dict) -> dict:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    got_in, want_in = [i.name for i in inputs], list(built.inputs)
    got_out, want_out = [o.name for o in graph.output], list(built.output_names)
    if got_in != want_in or got_out != want_out:
        raise ValueError(f"exported graph has inputs {got_in} and outputs {got_out}; "
                         f"expected {want_in} and {want_out}")
    for value in inputs:
        _set_shape(value, tuple(built.inputs[value.name].shape), built.dynamic.get(value.name, {}))
    for value in graph.output:
        _set_shape(value, reference[value.name].shape, built.dynamic.get(value.name, {}))

    props = {p.key: p for p in model.metadata_props}
    for key, val in info.items():
        name = f"vidcc.zoo.{key}"
        prop = props.get(name) or model.metadata_props.add()
        prop.key, prop.value = name, str(val)

    ops = count_nodes(graph)
    return {"nodes": sum(ops.values()), "top_level_nodes": len(graph.node), "ir_version": model.ir_version,
            "ops": dict(ops.most_common())}

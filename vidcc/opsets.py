"""Opset imports: raise a domain's version when a rewrite emits a newer op.

A contrib domain (com.microsoft, ...) is simply imported. The default domain is raised only when
every op in the graph stays valid at the new version: ops whose schema did not change, ops whose
change only added types or optional attributes/inputs, and the Reduce* ops whose `axes` attribute
became an input at opset 18 (converted here). Anything else refuses with the op that blocks it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.defs

from vidcc.ir import Graph, Node

# Ops whose newer versions keep the old semantics: added types, optional inputs or
# attributes with backward-compatible defaults (checked against onnx 1.23 schemas up to opset 24).
_COMPATIBLE = {
    "Split", "Pad", "ScatterElements", "ScatterND", "LpPool", "OptionalGetElement", "OptionalHasElement",
    "AveragePool", "Cast", "CastLike", "Constant", "ConstantOfShape", "DequantizeLinear", "QuantizeLinear",
    "Equal", "Identity", "If", "Loop", "Scan", "Reshape", "Shape", "Size", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "IsInf", "IsNaN", "QLinearMatMul", "DeformConv", "RoiAlign", "ReduceMax", "ReduceMin",
    "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Bernoulli", "Conv", "ConvTranspose", "Cos", "Cosh",
    "Det", "Dropout", "Elu", "EyeLike", "GRU", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
    "HardSigmoid", "HardSwish", "InstanceNormalization", "LSTM", "LpNormalization", "MaxPool", "MaxRoiPool",
    "MaxUnpool", "Mish", "Multinomial", "NegativeLogLikelihoodLoss", "RNN", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Round", "Selu", "Sin", "Sinh", "Softplus",
    "Softsign", "Tan", "ThresholdedRelu", "Resize", "GroupNormalization", "TopK", "SplitToSequence", "Attention",
}
MAX_KNOWN = 24
# axes moved from attribute to input at opset 18 (ReduceSum did so at 13)
_AXES_TO_INPUT = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                  "ReduceMin", "ReduceProd", "ReduceSumSquare"}


def since(op: str, version: int, domain: str = "") -> int | None:
    try:
        return onnx.defs.get_schema(op, version, domain).since_version
    except onnx.defs.SchemaError:
        return None


def blocker(graph: Graph, version: int) -> str | None:
    """Why the default domain cannot be raised to `version` (None: it can)."""
    old = graph.opsets.get("", graph.opsets.get("ai.onnx", 1))
    if version <= old:
        return None
    if version > MAX_KNOWN:
        return f"vidcc knows the op changes only up to opset {MAX_KNOWN}"
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        before, after = since(node.op_type, old), since(node.op_type, version)
        if after is None:
            return f"{node.op_type} '{node.name}' does not exist at opset {version}"
        if before == after or node.op_type in _AXES_TO_INPUT:
            continue
        if node.op_type not in _COMPATIBLE:
            return f"{node.op_type} '{node.name}' changed between opset {old} and {version}"
        if node.op_type == "Resize" and node.attr("coordinate_transformation_mode") == b"tf_half_pixel_for_nn":
            return f"Resize '{node.name}' uses tf_half_pixel_for_nn, which opset {version} removed"
    return None


def raise_default(graph: Graph, version: int) -> None:
    """Raise the default domain to `version` (call blocker() first), converting Reduce* axes."""
    old = graph.opsets.get("", graph.opsets.get("ai.onnx", 1))
    if version <= old:
        return
    if old < 18 <= version:
        for op in _AXES_TO_INPUT:
            for node in graph.nodes_by_op(op):
                if node.domain in ("", "ai.onnx"):
                    _axes_to_input(graph, node)
    graph.opsets.pop("ai.onnx", None)
    graph.opsets[""] = version
    ir = _ir_version_for(version)
    if graph.meta.ir_version and graph.meta.ir_version < ir:
        graph.meta.ir_version = ir


def _axes_to_input(graph: Graph, node: Node) -> None:
    axes = node.attr("axes")
    if axes is None:
        return
    const = graph.add_constant(np.asarray(axes, np.int64), f"{node.name or node.op_type}_axes")
    graph.set_attr(node, "axes", None)
    graph.set_inputs(node, [node.inputs[0], const])


def _ir_version_for(opset: int) -> int:
    for ir_release, ir, default_opset, *_ in onnx.helper.VERSION_TABLE:
        if default_opset >= opset:
            return ir
    return onnx.IR_VERSION


def require(graph: Graph, domain: str, version: int) -> str | None:
    """Import `domain` at >= `version`; returns why not (None: done)."""
    domain = "" if domain == "ai.onnx" else domain
    if domain == "":
        why = blocker(graph, version)
        if why:
            return f"needs opset {version}, but {why}"
        raise_default(graph, version)
        return None
    if graph.opsets.get(domain, 0) < version:
        graph.opsets[domain] = version
    return None

"""STOPGAP, to be replaced by vidcc's precision passes (`tag-precision{dtype=fp16},materialize-precision`).

Until those passes exist, a target that must compute in half converts the whole graph to fp16 with
ONNX Runtime's converter (onnxruntime.transformers.float16): weights and activations in fp16, graph
inputs/outputs kept fp32 through Casts, and its default block list (Resize, Range, TopK, ...) kept in
fp32. It is applied only when the optimized graph holds no half-precision compute yet, so once the
precision passes are in a target's default pipeline this code does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto

HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def has_half_compute(model: onnx.ModelProto) -> bool:
    if any(t.data_type in HALF for t in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i in HALF for a in node.attribute):
            return True
    return False


def ensure_fp16(model_path: Path) -> bool:
    """Convert model_path in place (atomically) unless it already computes in half; True if converted."""
    header = onnx.load_model(str(model_path), load_external_data=False)
    if has_half_compute(header):
        return False
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_model(str(model_path))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    tmp = model_path.with_name(f".{model_path.name}.fp16")
    big = converted.ByteSize() > 1_900_000_000 if hasattr(converted, "ByteSize") else False
    try:
        data_name = model_path.name + ".data"
        onnx.save_model(converted, str(tmp), save_as_external_data=big, location=data_name if big else None)
        os.replace(tmp, model_path)
        if not big:  # the weights now live inside the model; drop the old external data
            (model_path.parent / data_name).unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
    return True

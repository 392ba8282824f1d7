"""Shared by the fusion passes: what to emit for a target, opset gating, small constant helpers.

What each backend really imports and runs was measured (ORT 1.31 CPU, TVM 0.27 relax ONNX frontend,
llvm), see docs in passes/fusion_*.py:
- ORT CPU runs GroupNormalization-21, LayerNormalization-17, RMSNormalization-23, Gelu-20,
  Attention-23, com.microsoft MultiHeadAttention/QuickGelu/Gelu/SkipLayerNormalization; not
  com.microsoft GroupNorm/BiasAdd/BiasSplitGelu (CUDA only). Its GroupNormalization-21 kernel is
  1.4-4x slower than the Reshape-InstanceNormalization-Reshape form, so for ORT that form is kept.
- TVM imports GroupNormalization(18/21), LayerNormalization, RMSNormalization-23, Gelu-20; not
  Attention-23 (its importer reads it as com.microsoft Attention) nor any com.microsoft op we emit.
A target may state its own choice with an attribute `fusion_prefs = {"GroupNorm": "InstanceNormalization"}`
(pattern name -> emitted op); every pass also takes an explicit option.
"""

from __future__ import annotations

import numpy as np

from vidcc import opsets
from vidcc.ir import Graph, Node

MS = "com.microsoft"


def target_name(ctx) -> str:
    return getattr(getattr(ctx, "target", None), "name", "") or ""


def is_ort(ctx) -> bool:
    """ORT or no target (no target means: plain standard ops that ORT CPU runs well)."""
    return getattr(ctx, "target", None) is None or target_name(ctx).startswith("ort")


def ort_cpu(ctx) -> bool:
    """ORT on its CPU EP (or no target): where the measured CPU kernel trade-offs apply."""
    return is_ort(ctx) and "cuda" not in target_name(ctx)


def preference(ctx, pattern: str) -> str | None:
    prefs = getattr(getattr(ctx, "target", None), "fusion_prefs", None) or {}
    return prefs.get(pattern)


class OpsetGate:
    """Whether the default domain may be raised to a version; computed once per pass run."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._why: dict[int, str | None] = {}

    def blocker(self, version: int) -> str | None:
        if self.graph.opsets.get("", 1) >= version:
            return None
        if version not in self._why:
            self._why[version] = opsets.blocker(self.graph, version)
        return self._why[version]

    def require(self, domain: str, version: int) -> None:
        why = opsets.require(self.graph, domain, version)
        if why:
            raise AssertionError(why)  # callers check blocker() first


def scalar(graph: Graph, tensor: str) -> float | None:
    """The value of a constant every element of which is equal (a broadcast scalar), else None."""
    a = graph.constant(tensor)
    if a is None or a.size == 0 or a.dtype.kind not in "fiu":
        return None
    flat = a.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def reduce_axes(graph: Graph, node: Node) -> list[int] | None:
    """Axes of a Reduce* node from its attribute (opset < 18) or constant input (>= 18)."""
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        a = graph.constant(node.inputs[1])
        if a is None:
            return None
        axes = [int(v) for v in a.reshape(-1)]
    return None if axes is None else list(axes)


def normalized_axes(axes, rank: int | None) -> list[int] | None:
    if axes is None or rank is None:
        return None
    return sorted(a % rank for a in axes)


def rank_of(graph: Graph, tensor: str) -> int | None:
    shape = graph.type_of(tensor).shape
    return None if shape is None else len(shape)


def per_axis(array: np.ndarray, rank: int, axis: int, size: int) -> np.ndarray | None:
    """A parameter broadcast against a rank-`rank` tensor that varies only along `axis`, as a 1-D
    array of `size` (None if it varies along another axis or does not broadcast)."""
    a = np.asarray(array)
    if a.ndim > rank:
        return None
    padded = a.reshape((1,) * (rank - a.ndim) + a.shape)
    axis %= rank
    if any(d != 1 for i, d in enumerate(padded.shape) if i != axis) or padded.shape[axis] not in (1, size):
        return None
    return np.broadcast_to(padded.reshape(-1), (size,)).astype(a.dtype, copy=True)


def static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def reshape_target(graph: Graph, node: Node) -> list[int] | None:
    """A Reshape's target shape with 0s resolved against its input (None if not constant)."""
    t = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if t is None:
        return None
    dims = [int(d) for d in t.reshape(-1)]
    src = graph.type_of(node.inputs[0]).shape
    if not node.attr("allowzero", 0):
        dims = [(src[i] if src is not None and i < len(src) else None) if d == 0 else d for i, d in enumerate(dims)]
    return dims


# Ops a backend's target may list as accepted (they are standard) that it does not really import:
# measured, so fusions never emit them for that backend whatever the target says.
_KNOWN_BROKEN = {
    "tvm": {("Attention", ""), ("Swish", ""), ("MultiHeadAttention", MS), ("QuickGelu", MS), ("Gelu", MS),
            ("FastGelu", MS), ("SimplifiedLayerNormalization", ""), ("SkipSimplifiedLayerNormalization", MS)},
}


def accepts(ctx, op: str, domain: str = "") -> bool:
    """ctx.supports(), minus what the target's backend is known not to import."""
    name = target_name(ctx)
    for prefix, broken in _KNOWN_BROKEN.items():
        if name.startswith(prefix) and (op, domain) in broken:
            return False
    return ctx.supports(op, domain)

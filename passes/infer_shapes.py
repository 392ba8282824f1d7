"""Shape inference, with optional static binding of input shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from vidcc.errors import SpecError
from vidcc.ir import Graph, TensorType
from vidcc.onnx_io import _type_of, to_proto
from vidcc.pass_manager import Pass, PassContext, PassResult


def _parse_shapes(items) -> dict[str, object]:
    """"sample:1x14x8x64x64" binds an input's shape; "frames:14" binds a symbolic dim ("=" works too,
    quoted in a spec string)."""
    out: dict[str, object] = {}
    for item in items:
        sep = ":" if ":" in item else "="
        if sep not in item:
            raise SpecError(f"infer-shapes: '{item}' is not NAME:DIMS (e.g. sample:1x14x4x64x64 or frames:14)")
        key, value = item.split(sep, 1)
        try:
            dims = tuple(int(d) for d in value.lower().split("x"))
        except ValueError:
            raise SpecError(f"infer-shapes: '{item}': dims must be integers joined by x") from None
        out[key.strip()] = dims
    return out


def bind_shapes(graph: Graph, binds: dict[str, object]) -> list[str]:
    """Fix graph input shapes. A key naming an input takes a full shape (tuple) or an array (its
    shape); a key naming a symbolic dim takes an int. Returns what was bound."""
    dims: dict[str, int] = {}
    for key, value in binds.items():
        if key not in graph.inputs:
            arr = np.asarray(value)
            if arr.size == 1 and np.issubdtype(arr.dtype, np.integer):
                dims[key] = int(arr.reshape(-1)[0])
    bound = []
    for name in graph.inputs:
        t = graph.type_of(name)
        if name in binds:
            value = binds[name]
            shape = tuple(value) if isinstance(value, tuple) else np.shape(np.asarray(value))
            if t.shape is not None and (len(t.shape) != len(shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(t.shape, shape))):
                raise SpecError(f"infer-shapes: input '{name}' has shape {t}, cannot bind {shape}")
        elif t.shape is not None and any(isinstance(d, str) and d in dims for d in t.shape):
            shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in t.shape)
        else:
            continue
        if shape != t.shape:
            graph.types[name] = TensorType(t.dtype, tuple(shape))
            graph.io_meta.pop(name, None)  # the stored ValueInfo would restate the old shape
            bound.append(name)
    return bound


def _specificity(t: TensorType) -> int:
    if not t.dtype:
        return -1
    if t.shape is None:
        return 0
    return 1 + sum(2 if isinstance(d, int) else 1 if isinstance(d, str) and not d.startswith("unk__") else 0
                   for d in t.shape)


def _named(d) -> bool:
    return isinstance(d, str) and not d.startswith("unk__")


def refresh_types(graph: Graph) -> int:
    """Re-infer every intermediate type from scratch (data propagation on) and keep the more specific
    of old and new; returns how many changed. Of the old intermediate types only named symbolic dims
    seed the probe (no dtype, static or unk__N dims: nothing stale can contradict inference, and an
    inferred static dim beats a seeded name), so a name inference cannot rebuild (the exporter's
    'frames*h*w' behind a Reshape to -1) still flows through Shape->Slice->Concat->Reshape; outputs
    of non-standard ops keep their whole type because ONNX inference cannot compute them."""
    probe = to_proto(graph, weights=False)
    standard = {o for n in graph.nodes if n.domain in ("", "ai.onnx") for o in n.outputs}
    keep = [vi for vi in probe.graph.value_info if vi.name not in standard]
    for name in (vi.name for vi in probe.graph.value_info if vi.name in standard):
        shape = graph.types[name].shape
        if shape is not None and any(_named(d) for d in shape):  # dtype 0: inference fills it in
            keep.append(helper.make_tensor_value_info(name, 0, [d if _named(d) else None for d in shape]))
    del probe.graph.value_info[:]
    probe.graph.value_info.extend(keep)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:
        return 0
    changed = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name in graph.inputs or vi.name in graph.constants:
            continue
        new = _type_of(vi)
        if new.shape is not None and any(isinstance(d, str) and d.startswith("unk__") for d in new.shape):
            # unk__N is named afresh by each inference run: kept, a later run's unk__N can name another
            # size (moe-dit-trouter:small: 1 routed token vs all 1024), and ORT's buffer planner trusts dim names
            new = TensorType(new.dtype, tuple(None if isinstance(d, str) and d.startswith("unk__") else d
                                              for d in new.shape))
        old = graph.types.get(vi.name, TensorType())
        if _specificity(new) > _specificity(old) and (not old.dtype or old.dtype == new.dtype):
            graph.types[vi.name] = new
            if vi.name in graph.outputs and vi.name in graph.io_meta:
                graph.io_meta.pop(vi.name)  # write the sharper output type on save
            changed += 1
    return changed


@dataclass(frozen=True)
class InferShapes(Pass):
    """Infer every tensor's dtype and shape (ONNX shape inference with data propagation).

    Rewrite cases:
    - inputs named in `shapes` ("sample:1x14x8x64x64") get that static shape; symbolic dims named
      there ("frames:14") or in ctx.bindings (a dim name bound to one int) are fixed in every input
      (ctx.bindings of input names are values, e.g. timesteps, not shapes: they are left alone);
    - intermediate types are re-inferred and replaced where the new one is more specific (static dims
      beat symbolic beat unknown), so shape folding can follow; the exporter's dim names seed it.
    """

    name = "infer-shapes"
    shapes: tuple[str, ...] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        binds: dict[str, object] = {k: v for k, v in (ctx.bindings or {}).items() if k not in graph.inputs}
        binds.update(_parse_shapes(self.shapes))
        bound = bind_shapes(graph, binds) if binds else []
        changed = refresh_types(graph)
        return PassResult(bool(bound or changed), {"bound_inputs": len(bound), "types_refined": changed})


PASSES = [InferShapes]

"""Physically remove channel classes found by `vidcc.channels.Analysis`: slice every constant, rewrite
every shape, split size, slice bound, gather index and channel-counting attribute the analysis
recorded, and shrink the tensor types. Used by fold-channels and prune-channels."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from vidcc.channels import Analysis, ChanInfo, const_value
from vidcc.ir import Graph, TensorType


class Removal:
    """Which ids go, given a set of removed class roots."""

    def __init__(self, an: Analysis, removed: set[int]):
        self.an = an
        flags = np.zeros(len(an.uf.parent), dtype=bool)
        if removed:
            flags[np.fromiter(removed, dtype=np.int64)] = True
        self.gone = flags[an.uf.roots]  # per id

    def keep(self, ids: np.ndarray) -> np.ndarray:
        return ~self.gone[ids]

    def keep_along(self, info: ChanInfo, k: int) -> np.ndarray:
        """Kept positions along ids dim k (a position stays while any channel on it stays)."""
        keep = self.keep(info.ids)
        if info.hidden:
            keep = keep.any(axis=-1)
        other = tuple(i for i in range(keep.ndim) if i != k)
        return keep.any(axis=other) if other else keep

    def new_dims(self, info: ChanInfo) -> tuple[int, ...]:
        keep = self.keep(info.ids)
        if info.hidden:
            keep = keep.any(axis=-1)
        dims = tuple(int(self.keep_along(info, k).sum()) for k in range(len(info.axes)))
        if int(np.prod(dims)) != int(keep.sum()):
            raise AssertionError(f"removal is not rectangular on a {info.dims} channel block")
        return dims


def empty_tensors(an: Analysis, removal: Removal) -> list[str]:
    """Tensors that would lose every channel along some axis."""
    return [t for t, info in an.info.items() if 0 in removal.new_dims(info)]


def apply_removal(graph: Graph, an: Analysis, removed: set[int]) -> dict[str, int]:
    """Remove the classes `removed` from `graph` (the graph the analysis ran on, or the original it
    was copied from: node ids and tensor names are the same). Returns counts of edits."""
    rm = Removal(an, removed)
    counts = defaultdict(int)
    new_dims: dict[str, tuple[int, ...]] = {}
    for t, info in an.info.items():
        dims = rm.new_dims(info)
        if dims != info.dims:
            if 0 in dims:
                raise AssertionError(f"removal would leave '{t}' without channels")
            new_dims[t] = dims
    an.new_dims = new_dims  # what each channel tensor's channel dims became (for cost reports)
    if not new_dims:
        return {}

    # constants: every (node, input slot) gets all its axis slices at once
    per_input: dict[tuple[int, int], list] = defaultdict(list)
    for site in an.const_sites:
        keep = ~rm.gone[site.pos_ids].all(axis=1)
        if not keep.all():
            per_input[(site.node, site.slot)].append((site.axis, keep))
    for (nid, slot), cuts in per_input.items():
        node = graph.node(nid)
        name = node.inputs[slot]
        arr = const_value(graph, name)
        for axis, keep in sorted(cuts, key=lambda c: c[0]):
            if arr.shape[axis] != keep.size:
                raise AssertionError(f"{node.label} input {slot}: axis {axis} has {arr.shape[axis]}, expected {keep.size}")
            arr = np.compress(keep, arr, axis=axis)
        replace_input(graph, node, slot, np.ascontiguousarray(arr))
        counts["constants"] += 1

    for site in an.shape_sites:
        if site.tensor not in new_dims:
            continue
        node = graph.node(site.node)
        values = {p: new_dims[site.tensor][d] for p, d, e in zip(site.positions, site.dims, site.edit) if e}
        _rewrite_shape(graph, an, node, site.slot, values)
        counts["shapes"] += 1

    for site in an.axis_sites:
        info = an.info[site.tensor]
        keep = rm.keep_along(info, site.dim)
        if keep.all():
            continue
        node = graph.node(site.node)
        if site.kind == "split":
            offsets = np.cumsum([0] + site.extra["sizes"])
            sizes = [int(keep[offsets[i]:offsets[i + 1]].sum()) for i in range(len(site.extra["sizes"]))]
            if 0 in sizes:
                raise AssertionError(f"removal would empty an output of {node.label}")
            if graph.opsets.get("", 13) >= 13:
                inputs = list(node.inputs) + [""] * (2 - len(node.inputs))
                inputs[1] = graph.add_constant(np.array(sizes, np.int64), f"{node.name or 'split'}_sizes")
                graph.set_inputs(node, inputs)
                graph.set_attr(node, "num_outputs", None)
            else:
                graph.set_attr(node, "split", sizes)
        elif site.kind == "slice":
            i, s, e, n = site.extra["index"], site.extra["start"], site.extra["end"], site.extra["n"]
            ns, ne = int(keep[:s].sum()), int(keep[:e].sum())
            if ns == ne:
                raise AssertionError(f"removal would empty the output of {node.label}")
            if len(node.inputs) >= 3:
                for slot, value in ((1, ns), (2, ne)):
                    arr = np.array(const_value(graph, node.inputs[slot]), copy=True).reshape(-1)
                    arr[i] = value
                    replace_input(graph, node, slot, arr)
            else:
                for key, value in (("starts", ns), ("ends", ne)):
                    vals = list(node.attr(key))
                    vals[i] = value
                    graph.set_attr(node, key, vals)
        elif site.kind == "gather":
            newpos = np.cumsum(keep) - 1
            idx = site.extra["indices"]
            kept_idx = idx[keep[idx]]
            replace_input(graph, node, 1, newpos[kept_idx].astype(const_value(graph, node.inputs[1]).dtype))
        counts[site.kind] += 1

    for site in an.attr_sites:
        if site.tensor not in new_dims:
            continue
        node = graph.node(site.node)
        value = new_dims[site.tensor][site.dim]
        if value % site.per:
            raise AssertionError(f"{node.label}: {value} channels do not divide into units of {site.per}")
        graph.set_attr(node, site.attr, value // site.per)
        counts["attributes"] += 1

    for t, dims in new_dims.items():
        info = an.info[t]
        old = graph.types.get(t)
        if old is None or old.shape is None:
            continue
        shape = list(old.shape)
        if max(info.axes) >= len(shape):
            continue
        for a, d in zip(info.axes, dims):
            shape[a] = d
        graph.types[t] = TensorType(old.dtype, tuple(shape))
        counts["types"] += 1
    return dict(counts)


def replace_input(graph: Graph, node, slot: int, array: np.ndarray) -> None:
    """Give one node input a new constant value without touching other readers of the old one."""
    name = node.inputs[slot]
    if graph.is_constant(name) and len(graph.consumers(name)) == 1 and name not in graph.outputs:
        graph.set_constant(name, array)
    else:
        graph.set_input(node, slot, graph.add_constant(array, name or "const"))


def _rewrite_shape(graph: Graph, an: Analysis, node, slot: int, values: dict[int, int]) -> None:
    """Set entries of a shape input: a constant target is replaced; in a Concat of pieces only the
    constant pieces holding the entries are (the Concat is copied first if others read it)."""
    target = node.inputs[slot]
    elems = an.sym(target)
    if all(e[0] == "c" for e in elems):
        arr = np.array([e[1] for e in elems], dtype=np.int64)
        for p, v in values.items():
            arr[p] = v
        old = const_value(graph, target)
        replace_input(graph, node, slot, arr.reshape(old.shape) if old is not None and old.size == arr.size else arr)
        return
    concat = graph.producer(target)
    if len(graph.consumers(target)) > 1 or target in graph.outputs:
        out = graph.unique_name(target + "_pruned")
        concat = graph.add_node("Concat", list(concat.inputs), [out], name=graph.unique_node_name(concat.name + "_pruned"),
                                attrs={"axis": concat.attr("axis")}, types=[graph.type_of(target)])
        graph.set_input(node, slot, out)
    offset = 0
    for pslot, piece in enumerate(list(concat.inputs)):
        ps = an.sym(piece)
        hits = {p - offset: v for p, v in values.items() if offset <= p < offset + len(ps)}
        if hits:  # a constant piece, or a one-entry piece computed from channel counts: replaced
            arr = np.array([hits[i] if i in hits else e[1] for i, e in enumerate(ps)], dtype=np.int64)
            graph.set_input(concat, pslot, graph.add_constant(arr, piece + "_pruned"))
        offset += len(ps)

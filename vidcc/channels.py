"""Channel dependency analysis: which channels of a graph must be removed together, and what a
removal has to edit.

Model. Every output channel of a weight-carrying op (Conv, ConvTranspose, Gemm, MatMul with a
constant weight) gets a fresh integer id. Every tensor that carries such channels gets a `ChanInfo`:
the tensor axes the channels run along and an array of ids laid out like those axes. Ops relate the
ids of their inputs and outputs; where two tensors must keep the same channels (a residual Add, a
Mul, the two halves of GEGLU, Q and K of one head, the channels of one GroupNorm group) their ids
are united in a union-find. A *class* (a union-find root) is the smallest set of channels that can
be removed on its own; a *group* is the set of classes that share one producer's output.

While walking the graph the analysis records:
- sites: what a removal edits — slices of constants (weights, biases, norm scales, per-channel
  tables), Reshape/Expand targets, Split sizes, Slice bounds, Gather indices, attributes
  (Conv group, num_groups, num_heads) — each keyed by ids, so the kept positions follow from the
  removed classes;
- sinks: where channels are reduced (a consumer weight, a dynamic contraction, a norm's
  statistics); fold-channels checks them to decide whether a removal is exact;
- blockers: why a class can never be removed (it reaches a graph output, passes an op not in the
  table, a Reshape whose channel mapping cannot be proven, ...). A blocked class is left alone;
  nothing unproven is ever edited.
- values (optional): for each channel, a constant value when the channel is provably the same
  number everywhere (0 for a channel whose producing weights and bias are zero), NaN otherwise.

Reshape proofs need static shapes: pass `feeds` (sample inputs) for graphs with dynamic axes; the
shapes then come from one ONNX Runtime run that returns only the Shape of every tensor.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from vidcc.ir import Graph, Node

MS = "com.microsoft"

# roles of constant slices
PRODUCER = "producer"  # output channels of a weight: ranked by pruning criteria, zeroed when pruned
CONSUMER = "consumer"  # input channels of a weight
ADD = "add"  # additive per-channel constant on the channel path (bias, beta, shift): zeroed when pruned
SCALE = "scale"  # multiplicative / other per-channel constant


class Refuse(Exception):
    """A rule cannot prove how an op treats its channels; the reason is recorded as a blocker."""


# ---- union-find over channel ids -------------------------------------------------------------------
class UnionFind:
    def __init__(self):
        self.parent: list[int] = []
        self._roots: np.ndarray | None = None

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self._roots = None
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        if a.shape != b.shape:
            raise AssertionError(f"union of {a.shape} and {b.shape}")
        if np.array_equal(a, b):
            return
        self._roots = None
        find = self.find
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                if rx < ry:
                    self.parent[ry] = rx
                else:
                    self.parent[rx] = ry

    def union_lines(self, ids: np.ndarray, dim: int) -> None:
        """Unite the ids along `dim` within every line (each line becomes one unit)."""
        moved = np.moveaxis(ids, dim, -1).reshape(-1, ids.shape[dim])
        if moved.shape[1] > 1:
            self.union(np.repeat(moved[:, :1], moved.shape[1] - 1, axis=1), moved[:, 1:])

    @property
    def roots(self) -> np.ndarray:
        if self._roots is None:
            p = np.asarray(self.parent, dtype=np.int64)
            while True:
                q = p[p]
                if np.array_equal(q, p):
                    break
                p = q
            self._roots = p
        return self._roots


# ---- what the analysis records ---------------------------------------------------------------------
@dataclass
class ChanInfo:
    """Channels of one tensor: `ids[i0, i1, ...]` is the channel at index i_k of tensor axis axes[k].
    hidden=True: ids has one more trailing dim, channels folded as the major factor of axis
    axes[-1] + 1 (GroupNorm's [N, G, C/G*H*W] reshape); those always move as one unit."""

    axes: tuple[int, ...]
    ids: np.ndarray
    hidden: bool = False

    @property
    def dims(self) -> tuple[int, ...]:
        return self.ids.shape[:len(self.axes)]


@dataclass
class ConstSite:
    """Positions along `axis` of the constant read by node input `slot`; pos_ids[p] are the ids
    position p serves (a position is kept while any of them is)."""

    node: int
    slot: int
    axis: int
    pos_ids: np.ndarray  # (positions, m)
    role: str


@dataclass
class ShapeSite:
    """A shape-valued input (Reshape/Expand target, Resize sizes) whose entries at `positions`
    are the sizes of `tensor`'s channel dims `dims` (positions[i] holds dims[i]); `edit` positions
    are constants to rewrite, the others follow by themselves (-1, 0, Shape of a coupled tensor)."""

    node: int
    slot: int
    tensor: str
    positions: list[int]
    dims: list[int]
    edit: list[bool]


@dataclass
class AxisSite:
    """Split sizes / Slice bounds / Gather indices along ids dim `dim` of the input tensor."""

    kind: str  # "split" | "slice" | "gather"
    node: int
    tensor: str
    dim: int
    extra: dict = field(default_factory=dict)


@dataclass
class AttrSite:
    """An attribute that counts channels: new value = kept size of `tensor`'s ids dim `dim` // per."""

    node: int
    attr: str
    tensor: str
    dim: int
    per: int


@dataclass
class Sink:
    """Where channels of `tensor` (ids dim 0 along `axis`) are reduced.
    kind: weight (consumer weight at input `slot`, ids along `waxis`), dyn (contraction with the
    dynamic tensor `other`), sum (exact when zero), lossy (statistics change: never exact)."""

    kind: str
    node: int
    tensor: str
    ids: np.ndarray
    slot: int = -1
    waxis: int = -1
    other: str | None = None
    other_ids: np.ndarray | None = None
    fold: str | None = None  # how a constant channel folds into a bias: conv | gemm | matmul | None
    reason: str = ""


# ---- helpers on the graph --------------------------------------------------------------------------
def const_value(graph: Graph, name: str) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, a Constant node, or Identity of either."""
    if not name:
        return None
    for _ in range(8):
        v = graph.constant(name)
        if v is not None:
            return v
        node = graph.producer(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            name = node.inputs[0]
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return _constant_attr(node)
        return None
    return None


def _constant_attr(node: Node) -> np.ndarray | None:
    for key, a in node.attrs.items():
        if key == "value":
            return numpy_helper.to_array(a.t)
        if key in ("value_float", "value_int"):
            return np.array(helper.get_attribute_value(a), np.float32 if key == "value_float" else np.int64)
        if key in ("value_floats", "value_ints"):
            return np.array(helper.get_attribute_value(a), np.float32 if key == "value_floats" else np.int64)
    return None


def runtime_shapes(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor under `feeds`, from one onnxruntime run of a probe copy whose
    outputs are Shape(t) of each tensor: activations are freed as usual, only shapes come back."""
    import onnxruntime as ort

    from vidcc import onnx_io
    from vidcc.ir import TensorType

    g = graph.copy()
    g.io_meta = {k: v for k, v in graph.io_meta.items() if k in graph.inputs}
    g.outputs = []
    out_of: dict[str, str] = {}
    taken = g.tensor_names()
    stem = "__vidcc_shape_"
    while any(t.startswith(stem) for t in taken):
        stem = "_" + stem
    for node in graph.toposort():
        for t in node.outputs:
            if not t or g.type_of(t).dtype == TensorProto.STRING:
                continue
            name = f"{stem}{len(out_of)}"
            s = g.add_node("Shape", [t], [name], name=name, types=[TensorType(TensorProto.INT64, None)])
            g.outputs.append(s.outputs[0])
            out_of[s.outputs[0]] = t
    if not g.outputs:
        return {}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # requested outputs survive
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_io.to_proto(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    shapes = {n: tuple(int(d) for d in np.asarray(v).tolist()) for n, v in zip(g.outputs, values)}
    result = {out_of[k]: v for k, v in shapes.items()}
    for name in graph.inputs:
        if name in feeds:
            result[name] = tuple(np.shape(feeds[name]))
    return result


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


# ---- the analysis ----------------------------------------------------------------------------------
class Analysis:
    """Run with `Analysis(graph, feeds=None, values=False)`; see the module docstring."""

    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray] | None = None, *, values: bool = False,
                 shapes: dict[str, tuple[int, ...]] | None = None):
        self.graph = graph
        self.values = values
        self.uf = UnionFind()
        self.info: dict[str, ChanInfo] = {}
        self.state: dict[str, np.ndarray] = {}  # per-channel constant value or NaN, shaped like ids
        self.const_sites: list[ConstSite] = []
        self.shape_sites: list[ShapeSite] = []
        self.axis_sites: list[AxisSite] = []
        self.attr_sites: list[AttrSite] = []
        self.sinks: list[Sink] = []
        self.producers: list[tuple[int, str, np.ndarray]] = []  # (node id, output tensor, ids)
        self.multi: list[np.ndarray] = []  # multi-dim ids arrays to make rectangular at the end
        self._poison: list[tuple[np.ndarray, str]] = []
        self._lossy: list[tuple[np.ndarray, str]] = []
        self._tags: list[tuple[np.ndarray, str]] = []
        self._sym: dict[str, list] = {}
        self._tainted: dict[str, list] = {}  # int tensor -> the (tensor, axis) channel counts it carries
        self._reads: list[tuple[str, int, str]] = []  # channel counts read by arbitrary ops
        self._follows: list[tuple[str, int, str, int, str]] = []  # shape entries read from other tensors
        if shapes is None and feeds:
            shapes = runtime_shapes(graph, feeds)
        self._shapes = shapes or {}
        self._run()

    # ---- shapes and constants ---------------------------------------------------------------------
    def shape(self, t: str) -> tuple | None:
        s = self._shapes.get(t)
        if s is not None:
            return s
        s = self.graph.type_of(t).shape
        if s is not None and all(isinstance(d, int) for d in s):
            return tuple(s)
        return None

    def rank(self, t: str) -> int | None:
        s = self._shapes.get(t)
        if s is not None:
            return len(s)
        s = self.graph.type_of(t).shape
        return None if s is None else len(s)

    def const(self, t: str) -> np.ndarray | None:
        return const_value(self.graph, t)

    def poison(self, ids: np.ndarray, reason: str) -> None:
        self._poison.append((np.asarray(ids).ravel(), reason))

    def lossy(self, ids: np.ndarray, reason: str) -> None:
        self._lossy.append((np.asarray(ids).ravel(), reason))

    def tag(self, ids: np.ndarray, what: str) -> None:
        """Mark channels as part of a structure ("groupnorm" group, attention "head")."""
        self._tags.append((np.asarray(ids).ravel(), what))

    def new_ids(self, n: int) -> np.ndarray:
        return self.uf.new(n)

    def set_info(self, t: str, info: ChanInfo, state: np.ndarray | None = None) -> None:
        if len(info.axes) > 1 and not info.hidden and 1 in info.dims:
            # an axis holding a single channel (a Split/Slice piece of a [.., 6, C] block) is not a
            # channel axis any more: its channel can only go with the whole tensor
            keep = [k for k, d in enumerate(info.dims) if d != 1] or [0]
            drop = tuple(k for k in range(len(info.axes)) if k not in keep)
            info = ChanInfo(tuple(info.axes[k] for k in keep), info.ids.squeeze(axis=drop))
            if state is not None:
                state = np.broadcast_to(state, info.ids.shape[:0] + np.shape(state)).squeeze(axis=drop) \
                    if np.ndim(state) == len(keep) + len(drop) else state
        shape = self.shape(t)
        if shape is not None and (max(info.axes) >= len(shape) or tuple(shape[a] for a in info.axes) != info.dims):
            raise Refuse(f"channel count of '{t}' does not match its shape {shape}")
        self.info[t] = info
        if self.values:
            self.state[t] = np.full(info.ids.shape, np.nan) if state is None else np.broadcast_to(
                state, info.ids.shape).astype(np.float64)

    def state_of(self, t: str) -> np.ndarray:
        s = self.state.get(t)
        return s if s is not None else np.full(self.info[t].ids.shape, np.nan)

    def add_multi(self, ids: np.ndarray, hidden: bool) -> None:
        if hidden:
            self.uf.union_lines(ids, ids.ndim - 1)
        if ids.ndim - hidden >= 2:
            self.multi.append(ids[..., 0] if hidden else ids)

    # ---- the walk ---------------------------------------------------------------------------------
    def _run(self) -> None:
        g = self.graph
        for node in g.toposort():
            tracked = [t for t in node.inputs if t and t in self.info]
            implicit = [t for t in node.implicit_inputs if t in self.info]
            if not tracked and node.op_type in ("Expand", "ConstantOfShape") and node.inputs and \
                    node.inputs[-1] in self._tainted:
                self._fill_like(node)
                continue
            self._check_shape_uses(node)
            if implicit:
                for t in implicit:
                    self.poison(self.info[t].ids, f"used inside a subgraph of {node.label}")
            rule = RULES.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
            if node.op_type == "Shape" and node.domain in ("", "ai.onnx"):
                self._track_shape(node)
                continue
            if not tracked and node.op_type not in SOURCES:
                if node.op_type in SYM_OPS or node.op_type in INT_ARITH:
                    self._track_shape(node)
                continue
            if rule is None:
                for t in tracked:
                    self.poison(self.info[t].ids, f"{node.op_type} at {node.label} is not in the channel table")
                continue
            start = len(self.uf.parent)
            try:
                rule(self, node)
            except Refuse as r:
                if len(self.uf.parent) > start:  # ids the rule made belong to no proven tensor
                    self.poison(np.arange(start, len(self.uf.parent)), f"{r} at {node.label}")
                for t in tracked:
                    self.poison(self.info[t].ids, f"{r} at {node.label}")
                for o in node.outputs:
                    if o in self.info:
                        self.poison(self.info[o].ids, f"{r} at {node.label}")
        for t in g.outputs:
            if t in self.info:
                self.poison(self.info[t].ids, f"reaches graph output '{t}'")
        for ids in self.multi:
            self._rectangular(ids)
        self._check_reads()
        self._check_follows()
        self._finish()

    def _check_follows(self) -> None:
        """A shape entry read from dim k of `src` stands for dim j of `out`: both must keep the same
        count under any removal — index by index, the same classes."""
        roots = self.uf.roots
        for out, j, src, k, where in self._follows:
            a, b = self.info[out], self.info[src]
            ra = np.moveaxis(roots[a.ids], j, 0).reshape(a.ids.shape[j], -1)
            rb = np.moveaxis(roots[b.ids], k, 0).reshape(b.ids.shape[k], -1)
            if ra.shape[0] != rb.shape[0] or any(set(x.tolist()) != set(y.tolist()) for x, y in zip(ra, rb)):
                self.poison(a.ids, f"a channel size of {where} comes from '{src}', whose channels differ")
                self.poison(b.ids, f"a channel size of {where} comes from '{src}', whose channels differ")

    def _check_reads(self) -> None:
        """A count read as a value is harmless when that dim can never shrink: every line of ids
        along it is one class (a head's dims when heads go whole); otherwise its channels stay."""
        roots = self.uf.roots
        for src, axis, reason in self._reads:
            info = self.info[src]
            if axis in info.axes:
                k = info.axes.index(axis)
                lines = np.moveaxis(roots[info.ids[..., 0] if info.hidden else info.ids], k, -1)
                lines = lines.reshape(-1, lines.shape[-1])
                if bool((lines == lines[:, :1]).all()) and lines.shape[0] > 1:
                    continue
            elif info.hidden:
                continue  # the hidden dim is always one unit per position: it never shrinks
            self.poison(info.ids, reason)

    def _rectangular(self, ids: np.ndarray) -> None:
        """A reshape of channels into several axes stays valid only if the kept ids form a product:
        classes must be unions of whole columns (the same inner index of every row) or else every
        row becomes one unit (a whole head)."""
        roots = self.uf.roots[ids.reshape(ids.shape[0], -1)]
        if ids.ndim == 2 and bool((roots == roots[:1]).all()):
            return
        self.uf.union_lines(ids.reshape(ids.shape[0], -1), 1)

    def _finish(self) -> None:
        roots = self.uf.roots
        self.blocked: dict[int, list[str]] = defaultdict(list)
        for ids, reason in self._poison:
            for r in np.unique(roots[ids]).tolist():
                if len(self.blocked[r]) < 4 and reason not in self.blocked[r]:
                    self.blocked[r].append(reason)
        self.tags: dict[int, set[str]] = defaultdict(set)
        for ids, what in self._tags:
            for r in np.unique(roots[ids]).tolist():
                self.tags[r].add(what)
        self.lossy_reasons: dict[int, list[str]] = defaultdict(list)
        for ids, reason in self._lossy:
            for r in np.unique(roots[ids]).tolist():
                if len(self.lossy_reasons[r]) < 4 and reason not in self.lossy_reasons[r]:
                    self.lossy_reasons[r].append(reason)

    # ---- shape values (Shape -> Gather/Concat -> Reshape) -----------------------------------------
    def sym(self, t: str) -> list | None:
        """Elements of a 0-/1-D int tensor: ("c", v) constant, ("d", tensor, axis) a dim read by
        Shape, ("u",) unknown. None when not a small int vector."""
        if t in self._sym:
            return self._sym[t]
        self._sym[t] = None  # cycle guard
        result = self._sym_eval(t)
        self._sym[t] = result
        return result

    def _sym_eval(self, t: str) -> list | None:
        v = self.const(t)
        if v is not None:
            if v.dtype.kind not in "iu" or v.ndim > 1 or v.size > 16:
                return None
            return [("c", int(x)) for x in v.reshape(-1).tolist()]
        node = self.graph.producer(t)
        if node is None:
            return None
        op = node.op_type
        if op == "Shape":
            r = self.rank(node.inputs[0])
            if r is None:
                return None
            start, end = node.attr("start", 0), node.attr("end", r)
            return [("d", node.inputs[0], a) for a in range(r)[slice(start, end)]]
        if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
            return self.sym(node.inputs[0])
        if op == "Concat" and node.attr("axis", 0) in (0, -1):
            parts = [self.sym(i) for i in node.inputs]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and node.attr("axis", 0) == 0:
            src, idx = self.sym(node.inputs[0]), self.const(node.inputs[1])
            if src is None or idx is None:
                return None
            return [src[int(i)] for i in idx.reshape(-1).tolist()]
        if op == "Slice" and len(node.inputs) >= 3:
            src = self.sym(node.inputs[0])
            vals = [self.const(i) if i else None for i in node.inputs[1:5]]
            if src is None or vals[0] is None or vals[1] is None:
                return None
            step = int(vals[3][0]) if len(vals) > 3 and vals[3] is not None else 1
            return src[slice(int(vals[0][0]), int(vals[1][0]), step)]
        out = self.shape(t)
        if out is not None and len(out) <= 1:
            n = _prod(out) if out else 1
            return [("u",)] * n
        return None

    def _track_shape(self, node: Node) -> None:
        """Follow channel counts read by Shape through shape bookkeeping and integer arithmetic."""
        if node.op_type == "Shape":
            x = node.inputs[0]
            if x in self.info:
                dims = self._channel_dims_in(node.outputs[0])
                if dims:
                    self._tainted[node.outputs[0]] = dims
        elif node.op_type in SYM_OPS and any(i in self._tainted for i in node.inputs):
            dims = self._channel_dims_in(node.outputs[0])
            if dims:
                self._tainted[node.outputs[0]] = dims
        elif node.op_type in INT_ARITH and any(i in self._tainted for i in node.inputs):
            self._tainted[node.outputs[0]] = sorted({d for i in node.inputs for d in self._tainted.get(i, [])})

    def _fill_like(self, node: Node) -> None:
        """Expand(value, Shape(x)) / ConstantOfShape(Shape(x)) — torch.empty_like / full_like: a new
        tensor with x's channels (their count follows x's). Anything else it reads is recorded."""
        shape_in = node.inputs[-1]
        elems = self.sym(shape_in)
        out = node.outputs[0]
        src = {e[1] for e in (elems or []) if e[0] == "d" and e[1] in self.info}
        if elems is None or len(src) != 1:
            self._check_shape_uses(node)
            return
        x = src.pop()
        info = self.info[x]
        rank = self.rank(out)
        if info.hidden or rank is None or rank != len(elems) or any(elems[a] != ("d", x, a) for a in info.axes):
            self._check_shape_uses(node)
            return
        value = self.const(node.inputs[0]) if node.op_type == "Expand" else _constant_attr(node)
        state = None
        if self.values:
            v = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else np.nan
            state = np.full(info.ids.shape, v)
        try:
            self.set_info(out, ChanInfo(info.axes, info.ids), state)
        except Refuse as r:
            self.poison(info.ids, f"{r} at {node.label}")

    def _channel_dims_in(self, t: str) -> list[tuple[str, int]]:
        s = self.sym(t) or []
        return [(e[1], e[2]) for e in s if e[0] == "d" and e[1] in self.info and e[2] in self.info[e[1]].axes]

    def _check_shape_uses(self, node: Node) -> None:
        """A channel count read by Shape may only flow into shape bookkeeping that the rules check
        (Reshape/Expand targets, Resize sizes, torch.chunk's Slice bounds); anywhere else it would
        change value."""
        for slot, t in enumerate(node.inputs):
            if t not in self._tainted or node.op_type in SYM_OPS or node.op_type in INT_ARITH and \
                    not any(o in self.info for o in node.inputs):
                continue
            if node.inputs[0] in self.info and ((node.op_type, slot) in SHAPE_CONSUMERS
                                                or (node.op_type == "Slice" and slot in (1, 2))):
                continue  # the rule proves these or refuses
            for src, axis in self._tainted[t]:
                self._reads.append((src, axis, f"the channel count of '{src}' is read by {node.op_type} at {node.label}"))

    # ---- shape-input resolution -------------------------------------------------------------------
    def shape_site(self, node: Node, slot: int, out: str, positions: list[int], dims: list[int],
                   inp: str | None) -> None:
        """Check that the entries of a shape input at channel positions can follow a removal."""
        target = node.inputs[slot]
        elems = self.sym(target)
        if elems is None:
            raise Refuse(f"the shape input of {node.op_type} is not traceable")
        out_info = self.info[out]
        edit = []
        for p, j in zip(positions, dims):
            if p >= len(elems):
                raise Refuse(f"the shape input of {node.op_type} is shorter than its output rank")
            e = elems[p]
            if e[0] == "c" and e[1] == -1:
                edit.append(False)
            elif e[0] == "c" and e[1] == 0 and node.op_type == "Reshape" and not node.attr("allowzero", 0):
                ii = self.info.get(inp) if inp else None
                if ii is None or p not in ii.axes or ii.ids.shape != out_info.ids.shape or ii.axes != out_info.axes:
                    raise Refuse("a Reshape copies (0) a channel dim from a different position")
                edit.append(False)
            elif e[0] == "c":
                edit.append(True)
            elif e[0] == "d" and self._is_channel_dim(e[1], e[2]):
                src = self.info[e[1]]
                same = len(src.axes) == 1 and not src.hidden and out_info.ids.ndim == 1 \
                    and src.ids.shape == out_info.ids.shape
                producer = self.graph.producer(target)
                if same and producer is not None and producer.op_type == "Shape":
                    self.uf.union(src.ids, out_info.ids)  # reshape_as: follows by itself
                    edit.append(False)
                elif same and not self._piece_replaceable(target, p):
                    self.uf.union(src.ids, out_info.ids)
                    edit.append(False)
                elif self._piece_replaceable(target, p) or all(el[0] == "c" for el in elems):
                    edit.append(True)  # a channel count is a property of the weights: write the new one
                else:
                    # Shape of another channel tensor: follows by itself when both dims always keep
                    # the same count; checked once every coupling is known
                    self._follows.append((out, j, e[1], src.axes.index(e[2]), f"{node.op_type} at {node.label}"))
                    edit.append(False)
            elif self._piece_replaceable(target, p):
                edit.append(True)
            else:
                raise Refuse(f"coupling through {node.op_type} not provable: its channel size is computed at run time")
        if any(edit) and not self._editable(target, [p for p, e in zip(positions, edit) if e]):
            raise Refuse(f"the shape input of {node.op_type} cannot be rewritten (channel entries are computed)")
        if any(edit):
            self.shape_sites.append(ShapeSite(node.id, slot, out, list(positions), list(dims), edit))

    def _is_channel_dim(self, t: str, axis: int) -> bool:
        info = self.info.get(t)
        return info is not None and (axis in info.axes or (info.hidden and axis == info.axes[-1] + 1))

    def _weights_only(self, t: str, depth: int = 0) -> bool:
        """Whether an int tensor depends only on constants and channel counts (which the weights fix)."""
        if depth > 16:
            return False
        if self.const(t) is not None:
            return True
        elems = self.sym(t)
        if elems is not None and all(e[0] == "c" or (e[0] == "d" and self._is_channel_dim(e[1], e[2])) for e in elems):
            return True
        node = self.graph.producer(t)
        if node is None or not (node.op_type in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Concat") or
                                node.op_type in INT_ARITH):
            return False
        return all(self._weights_only(i, depth + 1) for i in node.inputs if i)

    def _piece_of(self, target: str, p: int) -> tuple[str, int, int] | None:
        """(piece tensor, its offset, its length) holding entry p of a Concat-built shape."""
        node = self.graph.producer(target)
        if node is None or node.op_type != "Concat":
            return None
        offset = 0
        for piece in node.inputs:
            ps = self.sym(piece)
            if ps is None:
                return None
            if offset <= p < offset + len(ps):
                return piece, offset, len(ps)
            offset += len(ps)
        return None

    def _piece_replaceable(self, target: str, p: int) -> bool:
        found = self._piece_of(target, p)
        return found is not None and found[2] == 1 and self._weights_only(found[0])

    def _editable(self, target: str, positions: list[int]) -> bool:
        """Edited entries live in constants, or in one-entry Concat pieces computed from weights."""
        elems = self.sym(target)
        if all(e[0] == "c" for e in elems):
            return True
        for p in positions:
            found = self._piece_of(target, p)
            if found is None:
                return False
            piece, offset, n = found
            ps = self.sym(piece)
            if not (all(e[0] == "c" for e in ps) or (n == 1 and self._weights_only(piece))):
                return False
        return True


# ---- rules -----------------------------------------------------------------------------------------
def _aligned(an: Analysis, node: Node, out_rank: int):
    """For an elementwise node: (tracked inputs as (slot, info, offset)), others as (slot, name, offset)."""
    tracked, others = [], []
    for slot, t in enumerate(node.inputs):
        if not t:
            continue
        r = an.rank(t)
        if r is None:
            raise Refuse(f"rank of '{t}' unknown")
        (tracked if t in an.info else others).append((slot, t, out_rank - r))
    return tracked, others


def _per_channel_values(arr: np.ndarray, offset: int, info: ChanInfo, out_rank: int) -> np.ndarray:
    """A constant's value per channel (shaped like info.dims) or NaN where it varies elsewhere."""
    full = arr.reshape((1,) * (out_rank - arr.ndim) + arr.shape).astype(np.float64)
    axes = list(info.axes)
    moved = np.moveaxis(full, axes, list(range(len(axes))))
    lead = moved.shape[:len(axes)]
    flat = moved.reshape(lead + (-1,))
    vals = flat[..., 0]
    varies = (flat.max(axis=-1) != flat.min(axis=-1)) if flat.shape[-1] > 1 else np.zeros(lead, bool)
    vals = np.where(varies, np.nan, vals)
    vals = np.broadcast_to(vals, info.dims)
    if info.hidden:
        vals = np.repeat(vals[..., None], info.ids.shape[-1], axis=-1)
    return vals


def _slab_ids(info: ChanInfo, k: int) -> np.ndarray:
    """(positions, m) ids along ids dim k: position p serves every id with index p on that dim."""
    moved = np.moveaxis(info.ids, k, 0)
    return moved.reshape(moved.shape[0], -1)


def _const_sites(an: Analysis, node: Node, slot: int, arr: np.ndarray, offset: int, info: ChanInfo, role: str) -> None:
    """A constant broadcast against channel tensor `info`: slice it where it spans a channel axis."""
    for k, axis in enumerate(info.axes):
        a = axis - offset
        if a < 0 or arr.shape[a] == 1:
            continue
        if arr.shape[a] != info.dims[k]:
            raise Refuse(f"constant input {slot} does not broadcast along the channels")
        an.const_sites.append(ConstSite(node.id, slot, a, _slab_ids(info, k), role))
    if info.hidden:
        a = info.axes[-1] + 1 - offset
        if a >= 0 and arr.shape[a] != 1:
            raise Refuse("a constant varies along a grouped (reshaped) channel axis")


_UNARY: dict[str, Callable[[np.ndarray, Node], np.ndarray]] = {}


def _erf(x):
    from scipy.special import erf

    return erf(x)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


_UNARY.update({
    "Identity": lambda x, n: x, "Dropout": lambda x, n: x, "Cast": lambda x, n: x,
    "Relu": lambda x, n: np.maximum(x, 0), "Sigmoid": lambda x, n: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, n: np.tanh(x), "Erf": lambda x, n: _erf(x), "Neg": lambda x, n: -x,
    "Abs": lambda x, n: np.abs(x), "Exp": lambda x, n: np.exp(x), "Log": lambda x, n: np.log(x),
    "Sqrt": lambda x, n: np.sqrt(x), "Reciprocal": lambda x, n: 1 / x, "Sin": lambda x, n: np.sin(x),
    "Cos": lambda x, n: np.cos(x), "Softplus": lambda x, n: np.log1p(np.exp(x)),
    "Softsign": lambda x, n: x / (1 + np.abs(x)), "Floor": lambda x, n: np.floor(x), "Ceil": lambda x, n: np.ceil(x),
    "Round": lambda x, n: np.round(x), "Sign": lambda x, n: np.sign(x),
    "LeakyRelu": lambda x, n: np.where(x >= 0, x, n.attr("alpha", 0.01) * x),
    "Elu": lambda x, n: np.where(x >= 0, x, n.attr("alpha", 1.0) * (np.exp(x) - 1)),
    "Selu": lambda x, n: n.attr("gamma", 1.0507) * np.where(x > 0, x, n.attr("alpha", 1.67326) * (np.exp(x) - 1)),
    "HardSigmoid": lambda x, n: np.clip(n.attr("alpha", 0.2) * x + n.attr("beta", 0.5), 0, 1),
    "HardSwish": lambda x, n: x * np.clip(x / 6 + 0.5, 0, 1), "Mish": lambda x, n: x * np.tanh(np.log1p(np.exp(x))),
    "Gelu": lambda x, n: _gelu(x), "FastGelu": lambda x, n: _gelu(x),
    "QuickGelu": lambda x, n: x / (1 + np.exp(-n.attr("alpha", 1.702) * x)),
    "Swish": lambda x, n: x / (1 + np.exp(-n.attr("alpha", 1.0) * x)),
    "Celu": lambda x, n: np.maximum(x, 0) + np.minimum(0, n.attr("alpha", 1.0) * (np.exp(x / n.attr("alpha", 1.0)) - 1)),
})


def rule_unary(an: Analysis, node: Node) -> None:
    if node.op_type in ("Gelu", "FastGelu") and len(node.inputs) > 1 and node.inputs[1]:
        raise Refuse(f"{node.op_type} with a bias input")
    if node.op_type == "Cast" and node.attr("to") not in (TensorProto.FLOAT, TensorProto.FLOAT16,
                                                          TensorProto.BFLOAT16, TensorProto.DOUBLE):
        raise Refuse("Cast to a non-float type")
    info = an.info[node.inputs[0]]
    state = None
    if an.values:
        with np.errstate(all="ignore"):
            state = _UNARY[node.op_type](an.state_of(node.inputs[0]), node)
    an.set_info(node.outputs[0], info, state)
    for extra in node.outputs[1:]:
        if extra and an.graph.is_used(extra):
            raise Refuse(f"second output of {node.op_type} is used")


def rule_clip(an: Analysis, node: Node) -> None:
    lo = an.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    hi = an.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if any(t in an.info for t in node.inputs[1:] if t):
        raise Refuse("Clip bounds carry channels")
    lo = node.attr("min", -np.inf) if lo is None and len(node.inputs) < 2 else (-np.inf if lo is None else float(lo))
    hi = node.attr("max", np.inf) if hi is None and len(node.inputs) < 3 else (np.inf if hi is None else float(hi))
    state = np.clip(an.state_of(node.inputs[0]), lo, hi) if an.values else None
    an.set_info(node.outputs[0], an.info[node.inputs[0]], state)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Div": np.divide, "Pow": np.power, "Max": np.maximum, "Min": np.minimum,
    "Mul": lambda a, b: np.where((a == 0) | (b == 0), 0.0, a * b),  # 0 * anything finite is 0
    "Sum": np.add, "Mean": None, "PRelu": lambda x, s: np.where(x >= 0, x, s * x), "Where": None, "Mod": None,
}


def rule_elementwise(an: Analysis, node: Node) -> None:
    out = node.outputs[0]
    R = an.rank(out)
    if R is None:
        raise Refuse("output rank unknown")
    tracked, others = _aligned(an, node, R)
    infos = [(slot, an.info[t], off) for slot, t, off in tracked]
    base_slot, base, boff = infos[0]
    axes = tuple(a + boff for a in base.axes)
    for slot, info, off in infos:
        if tuple(a + off for a in info.axes) != axes or info.ids.shape != base.ids.shape or info.hidden != base.hidden:
            raise Refuse(f"{node.op_type} combines channels along different axes")
        if node.op_type == "Where" and slot == 0:
            raise Refuse("Where's condition carries channels")
    for _, info, _ in infos[1:]:
        an.uf.union(base.ids, info.ids)
    out_info = ChanInfo(axes, base.ids, base.hidden)
    states = {}
    for slot, t, off in others:
        arr = an.const(t)
        shape = an.shape(t) if arr is None else arr.shape
        if shape is None:
            raise Refuse(f"shape of '{t}' unknown")
        spans = [a - off for a in axes if a - off >= 0 and shape[a - off] != 1]
        if out_info.hidden and out_info.axes[-1] + 1 - off >= 0 and shape[out_info.axes[-1] + 1 - off] != 1:
            raise Refuse(f"input '{t}' varies along a grouped channel axis")
        if arr is None:
            if spans:
                spanned = [k for k, a in enumerate(axes) if a - off >= 0 and shape[a - off] != 1]
                if len(spanned) == len(axes):
                    raise Refuse(f"{node.op_type} combines the channels with '{t}', which spans them but is not traced")
                for k in spanned:  # e.g. rotary cos/sin over head_dim: fine while head_dim never shrinks
                    an.uf.union_lines(base.ids, k)
            states[slot] = np.nan
            continue
        if node.op_type == "Where" and slot == 0:
            states[slot] = np.nan
            if spans:
                raise Refuse("Where's condition varies along the channels")
            continue
        role = ADD if node.op_type in ("Add", "Sub", "Sum") else SCALE
        _const_sites(an, node, slot, arr, off, out_info, role)
        if an.values:
            states[slot] = _per_channel_values(arr, off, out_info, R) if arr.size else np.nan
    state = None
    if an.values:
        for slot, info, _ in infos:
            states[slot] = an.state_of(node.inputs[slot])
        vals = [states[s] for s in sorted(states)]
        fn = _BINARY.get(node.op_type)
        with np.errstate(all="ignore"):
            if node.op_type == "Where":
                a, b = np.broadcast_arrays(vals[1], vals[2])
                state = np.where(a == b, a, np.nan)
            elif node.op_type == "Mean":
                state = sum(np.asarray(v, np.float64) for v in vals) / len(vals)
            elif fn is None:
                state = None
            else:
                state = vals[0]
                for v in vals[1:]:
                    state = fn(state, v)
    an.set_info(out, out_info, state)


def rule_conv(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    w = an.const(node.inputs[1])
    b = an.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    xi = an.info.get(x)
    if w is None or (len(node.inputs) > 2 and node.inputs[2] and b is None):
        raise Refuse("Conv weight or bias is not constant")
    group = node.attr("group", 1)
    transpose = node.op_type == "ConvTranspose"
    cin_axis, cout_axis = (0, 1) if transpose else (1, 0)
    cout = w.shape[1] * group if transpose else w.shape[0]
    depthwise = group > 1 and not transpose and w.shape[1] == 1 and cout == group
    if xi is not None and (xi.axes != (1,) or xi.hidden):
        raise Refuse("Conv input channels are not on axis 1")
    if depthwise and xi is not None and xi.ids.size == group:
        ids = xi.ids
        an.const_sites.append(ConstSite(node.id, 1, 0, ids[:, None], SCALE))
        if b is not None:
            an.const_sites.append(ConstSite(node.id, 2, 0, ids[:, None], ADD))
        an.attr_sites.append(AttrSite(node.id, "group", node.outputs[0], 0, 1))
        state = None
        if an.values:
            zero_w = ~w.reshape(cout, -1).any(axis=1)
            bias = b.astype(np.float64) if b is not None else np.zeros(cout)
            sx = an.state_of(x)
            state = np.where(zero_w | (sx == 0), bias, np.nan)
        an.set_info(node.outputs[0], ChanInfo((1,), ids), state)
        return
    if group != 1:
        out = an.new_ids(cout)
        an.poison(out, f"grouped {node.op_type} (group={group})")
        if xi is not None:
            an.poison(xi.ids, f"grouped {node.op_type} (group={group})")
        an.set_info(node.outputs[0], ChanInfo((1,), out))
        return
    if xi is not None:
        if xi.ids.size != w.shape[cin_axis]:
            raise Refuse("Conv input channels do not match its weight")
        an.const_sites.append(ConstSite(node.id, 1, cin_axis, xi.ids[:, None], CONSUMER))
        pads = node.attr("pads", [0]) or [0]
        padless = not transpose and not any(pads) and node.attr("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID")
        an.sinks.append(Sink("weight", node.id, x, xi.ids, slot=1, waxis=cin_axis, fold="conv" if padless else None))
    out = an.new_ids(cout)
    an.const_sites.append(ConstSite(node.id, 1, cout_axis, out[:, None], PRODUCER))
    if b is not None:
        an.const_sites.append(ConstSite(node.id, 2, 0, out[:, None], ADD))
    an.producers.append((node.id, node.outputs[0], out))
    state = None
    if an.values:
        zero_w = ~np.moveaxis(w, cout_axis, 0).reshape(cout, -1).any(axis=1)
        bias = b.astype(np.float64) if b is not None else np.zeros(cout)
        state = np.where(zero_w, bias, np.nan)
    an.set_info(node.outputs[0], ChanInfo((1,), out), state)


def rule_gemm(an: Analysis, node: Node) -> None:
    a, bname = node.inputs[0], node.inputs[1]
    w = an.const(bname)
    c = an.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if w is None or node.attr("transA", 0) or (len(node.inputs) > 2 and node.inputs[2] and c is None):
        raise Refuse("Gemm without constant B/C or with transA")
    tb = node.attr("transB", 0)
    k_axis, n_axis = (1, 0) if tb else (0, 1)
    ai = an.info.get(a)
    if ai is not None:
        if ai.axes != (1,) or ai.hidden or ai.ids.size != w.shape[k_axis]:
            raise Refuse("Gemm input channels are not its K axis")
        an.const_sites.append(ConstSite(node.id, 1, k_axis, ai.ids[:, None], CONSUMER))
        an.sinks.append(Sink("weight", node.id, a, ai.ids, slot=1, waxis=k_axis, fold="gemm"))
    n = w.shape[n_axis]
    out = an.new_ids(n)
    an.const_sites.append(ConstSite(node.id, 1, n_axis, out[:, None], PRODUCER))
    if c is not None and c.ndim >= 1 and c.shape[-1] == n and n > 1:
        an.const_sites.append(ConstSite(node.id, 2, c.ndim - 1, out[:, None], ADD))
    elif c is not None and c.ndim >= 1 and c.shape[-1] != 1:
        raise Refuse("Gemm bias does not broadcast along the output channels")
    an.producers.append((node.id, node.outputs[0], out))
    state = None
    if an.values:
        zero_w = ~np.moveaxis(w, n_axis, 0).reshape(n, -1).any(axis=1)
        beta = node.attr("beta", 1.0)
        if c is None:
            bias = np.zeros(n)
        else:
            c2 = np.atleast_2d(c.astype(np.float64))
            c2 = np.broadcast_to(c2, (c2.shape[0], n))
            bias = np.where(c2.max(axis=0) == c2.min(axis=0), c2[0], np.nan) * beta
        state = np.where(zero_w, bias, np.nan)
    an.set_info(node.outputs[0], ChanInfo((1,), out), state)


def rule_matmul(an: Analysis, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    wb = an.const(b)
    if an.const(a) is not None:
        raise Refuse("MatMul with a constant left operand")
    ra, rb = an.rank(a), an.rank(b)
    if ra is None or rb is None or ra < 2 or rb < 2:
        raise Refuse("MatMul operand rank unknown or < 2")
    ai, bi = an.info.get(a), an.info.get(b)
    if wb is not None:
        if wb.ndim != 2:
            raise Refuse("MatMul with a constant weight of rank != 2")
        if ai is not None:
            if ai.axes != (ra - 1,) or ai.hidden or ai.ids.size != wb.shape[0]:
                raise Refuse("MatMul input carries channels outside its K axis")
            an.const_sites.append(ConstSite(node.id, 1, 0, ai.ids[:, None], CONSUMER))
            an.sinks.append(Sink("weight", node.id, a, ai.ids, slot=1, waxis=0, fold="matmul"))
        out = an.new_ids(wb.shape[1])
        an.const_sites.append(ConstSite(node.id, 1, 1, out[:, None], PRODUCER))
        an.producers.append((node.id, node.outputs[0], out))
        R = an.rank(node.outputs[0])
        state = np.where(~wb.any(axis=0), 0.0, np.nan) if an.values else None
        an.set_info(node.outputs[0], ChanInfo((R - 1,), out), state)
        return
    _matmul_dynamic(an, node, a, b, ra, rb, ai, bi)


def _matmul_dynamic(an, node, a, b, ra, rb, ai, bi) -> None:
    """Batched product of two activations (attention): batch axes couple, K contracts, M/N carry."""
    if ai is None and bi is None:
        return
    R = max(ra, rb)
    role = {}  # (which, axis) -> kind
    for which, info, r in (("a", ai, ra), ("b", bi, rb)):
        if info is None:
            continue
        if info.hidden:
            raise Refuse("MatMul over grouped channels")
        for k, ax in enumerate(info.axes):
            if ax < r - 2:
                role[(which, k)] = ("batch", ax + R - r)
            elif (which == "a" and ax == r - 1) or (which == "b" and ax == r - 2):
                role[(which, k)] = ("k", None)
            else:
                role[(which, k)] = ("m" if which == "a" else "n", R - 2 if which == "a" else R - 1)
    kinds_a = [role[("a", k)][0] for k in range(len(ai.axes))] if ai else []
    kinds_b = [role[("b", k)][0] for k in range(len(bi.axes))] if bi else []
    # a contracted or batch channel must be traced on both sides
    for kinds, other in ((kinds_a, bi), (kinds_b, ai)):
        if other is None and any(k in ("k", "batch") for k in kinds):
            raise Refuse("MatMul contracts channels with an untraced operand")
    if ai is not None and bi is not None:
        shared_a = [k for k, kd in enumerate(kinds_a) if kd in ("k", "batch")]
        shared_b = [k for k, kd in enumerate(kinds_b) if kd in ("k", "batch")]
        if [kinds_a[k] for k in shared_a] != [kinds_b[k] for k in shared_b]:
            raise Refuse("MatMul operands carry channels on different axes")
        # heads: a batch channel couples every channel of its slice
        for info, kinds in ((ai, kinds_a), (bi, kinds_b)):
            if "batch" in kinds:
                an.tag(info.ids, "head")
                for k, kd in enumerate(kinds):
                    if kd != "batch":
                        an.uf.union_lines(info.ids, k)
        sa = ai.ids.transpose([*shared_a, *[k for k in range(len(kinds_a)) if k not in shared_a]])
        sb = bi.ids.transpose([*shared_b, *[k for k in range(len(kinds_b)) if k not in shared_b]])
        sa = sa.reshape(sa.shape[:len(shared_a)] + (-1,))[..., 0]
        sb = sb.reshape(sb.shape[:len(shared_b)] + (-1,))[..., 0]
        if sa.shape != sb.shape:
            raise Refuse("MatMul operands' channel counts differ")
        an.uf.union(sa, sb)
        if "k" in kinds_a and "batch" not in kinds_a:
            an.sinks.append(Sink("dyn", node.id, a, ai.ids, other=b, other_ids=bi.ids))
    # output channels: batch (+ m or n from one side)
    out_axes, src = [], None
    for which, info, kinds in (("a", ai, kinds_a), ("b", bi, kinds_b)):
        if info is None:
            continue
        if any(kd in ("m", "n") for kd in kinds):
            if src is not None:
                raise Refuse("MatMul output would carry channels of both operands")
            src = (which, info, kinds)
    if src is None:
        src = ("a", ai, kinds_a) if ai is not None else ("b", bi, kinds_b)
    which, info, kinds = src
    keep = [k for k, kd in enumerate(kinds) if kd != "k"]
    if not keep:
        return
    ids = info.ids
    state = (an.state_of(a if which == "a" else b) == 0) if an.values else None  # a zero row/column stays 0
    for k in sorted((k for k, kd in enumerate(kinds) if kd == "k"), reverse=True):
        ids = np.take(ids, 0, axis=k)
        if state is not None:
            state = state.all(axis=k)
    axes = [role[(which, k)][1] for k in keep]
    order = np.argsort(axes)
    if state is not None:
        state = np.where(state.transpose(order), 0.0, np.nan)
    an.set_info(node.outputs[0], ChanInfo(tuple(int(axes[i]) for i in order), ids.transpose(order)), state)


def rule_transpose(an: Analysis, node: Node) -> None:
    info = an.info[node.inputs[0]]
    r = an.rank(node.inputs[0])
    perm = node.attr("perm") or list(range(r))[::-1]
    new = [perm.index(a) for a in info.axes]
    order = list(np.argsort(new))
    axes = tuple(new[i] for i in order)
    ids = info.ids.transpose(order + ([info.ids.ndim - 1] if info.hidden else []))
    if info.hidden:
        last = info.axes[-1]
        if perm.index(last + 1) != perm.index(last) + 1 or order[-1] != len(order) - 1:
            raise Refuse("Transpose separates grouped channels from their axis")
    state = an.state_of(node.inputs[0]).transpose(order + ([info.ids.ndim - 1] if info.hidden else [])) if an.values else None
    an.set_info(node.outputs[0], ChanInfo(axes, ids, info.hidden), state)


def _map_reshape(an: Analysis, in_shape, info: ChanInfo, out_shape):
    """Where the channel block of a row-major reshape lands: (axes, ids, hidden) or a Refuse."""
    axes = info.axes
    big_in = [a for a, d in enumerate(in_shape) if d != 1]
    big_out = [a for a, d in enumerate(out_shape) if d != 1]
    if [in_shape[a] for a in big_in] == [out_shape[a] for a in big_out] and all(a in big_in for a in axes) \
            and not info.hidden:
        # only size-1 axes come or go ([1, H, S, D] -> [H, S, D]): every other axis keeps its identity
        return tuple(big_out[big_in.index(a)] for a in axes), info.ids, False
    if list(axes) != list(range(axes[0], axes[-1] + 1)):
        raise Refuse("Reshape of channels spread over non-adjacent axes")
    k = info.ids.shape[-1] if info.hidden else 1
    outer = _prod(in_shape[:axes[0]])
    block = _prod(in_shape[axes[0]:axes[-1] + 1]) * k
    total = _prod(in_shape)
    inner = total // (outer * block) if outer * block else 0
    if outer * block * inner != total:
        raise Refuse("Reshape shapes do not factor")
    full = info.ids.reshape(-1)
    prefix = [1]
    for d in out_shape:
        prefix.append(prefix[-1] * int(d))
    for b0 in range(len(out_shape)):
        if prefix[b0] != outer or (out_shape[b0] == 1 and block != 1):
            continue
        p, b = 1, b0
        while b < len(out_shape) and block % (p * out_shape[b]) == 0 and p * out_shape[b] <= block:
            p *= int(out_shape[b])
            b += 1
            if p == block:
                break
        if p == block:
            if _prod(out_shape[b:]) != inner:
                continue
            return tuple(range(b0, b)), full.reshape(tuple(out_shape[b0:b])), False
        r = block // p
        if b > b0 and b < len(out_shape) and out_shape[b] % r == 0 and _prod(out_shape[b:]) == r * inner:
            return tuple(range(b0, b)), full.reshape(tuple(out_shape[b0:b]) + (r,)), True
    raise Refuse("coupling through Reshape not provable")


def rule_reshape(an: Analysis, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    info = an.info[x]
    if node.op_type == "Reshape" and node.inputs[1] in an.info:
        raise Refuse("Reshape target carries channels")
    si, so = an.shape(x), an.shape(out)
    if si is None or so is None:
        raise Refuse("coupling through Reshape not provable (shapes not static: give sample inputs)")
    axes, ids, hidden = _map_reshape(an, si, info, so)
    an.add_multi(ids, hidden)
    state = an.state_of(x).reshape(ids.shape) if an.values else None
    an.set_info(out, ChanInfo(axes, ids, hidden), state)
    if node.op_type == "Reshape":
        an.shape_site(node, 1, out, list(axes), list(range(len(axes))), x)


def rule_squeeze(an: Analysis, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    info = an.info[x]
    si, so = an.rank(x), an.rank(out)
    if si is None or so is None:
        raise Refuse("rank unknown")
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        v = an.const(node.inputs[1])
        if v is None:
            raise Refuse(f"{node.op_type} axes not constant")
        axes = v.reshape(-1).tolist()
    if node.op_type == "Unsqueeze":
        axes = sorted(a % so for a in axes)
        kept = [i for i in range(so) if i not in axes]  # output positions of the input axes
    else:
        if axes is None:
            shape = an.shape(x)
            if shape is None:
                raise Refuse("Squeeze without axes on an unknown shape")
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = sorted(a % si for a in axes)
        if any(a in info.axes for a in axes):
            raise Refuse("Squeeze of a channel axis")
        pos = [i for i in range(si) if i not in axes]
        kept = [pos.index(i) if i in pos else None for i in range(si)]
    new = tuple(kept[a] for a in info.axes)
    if info.hidden and kept[info.axes[-1] + 1] != new[-1] + 1:
        raise Refuse(f"{node.op_type} separates grouped channels from their axis")
    an.set_info(out, ChanInfo(new, info.ids, info.hidden), an.state_of(x) if an.values else None)


def rule_flatten(an: Analysis, node: Node) -> None:
    rule_reshape(an, node)


def rule_expand(an: Analysis, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    info = an.info[x]
    r, R = an.rank(x), an.rank(out)
    if r is None or R is None:
        raise Refuse("rank unknown")
    axes = tuple(a + R - r for a in info.axes)
    an.set_info(out, ChanInfo(axes, info.ids, info.hidden), an.state_of(x) if an.values else None)
    elems = an.sym(node.inputs[1])
    if elems is None:
        raise Refuse("Expand shape is not traceable")
    off = len(elems) - R
    positions = [(a + off, k) for k, a in enumerate(axes) if a + off >= 0 and elems[a + off] != ("c", 1)]
    if positions:
        an.shape_site(node, 1, out, [p for p, _ in positions], [k for _, k in positions], None)


def rule_tile(an: Analysis, node: Node) -> None:
    info = an.info[node.inputs[0]]
    reps = an.const(node.inputs[1])
    axes = list(info.axes) + ([info.axes[-1] + 1] if info.hidden else [])
    if reps is None:
        # computed repeats that do not depend on the channel count (else the Shape check refused
        # them): what they are along the channels in this run, they are in every run
        si, so = an.shape(node.inputs[0]), an.shape(node.outputs[0])
        if si is None or so is None:
            raise Refuse("Tile repeats are computed and the shapes are not static")
        reps = [so[a] // si[a] if si[a] else 0 for a in range(len(si))]
    if any(int(reps[a]) != 1 for a in axes):
        raise Refuse("Tile repeats along the channels")
    an.set_info(node.outputs[0], info, an.state_of(node.inputs[0]) if an.values else None)


def _transparent_state(an: Analysis, x: str, keep_const: bool) -> np.ndarray | None:
    if not an.values:
        return None
    s = an.state_of(x)
    return s if keep_const else np.where(s == 0, 0.0, np.nan)


def rule_resize(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    if any(t in an.info for t in node.inputs[1:] if t):
        raise Refuse("Resize parameters carry channels")
    si = 1 if node.op_type == "Upsample" or an.graph.opsets.get("", 13) < 11 else 2
    scales = an.const(node.inputs[si]) if len(node.inputs) > si and node.inputs[si] else None
    if scales is not None and scales.size:
        if any(float(scales[a]) != 1.0 for a in info.axes):
            raise Refuse("Resize scales the channel axis")
    elif len(node.inputs) > 3 and node.inputs[3]:
        an.set_info(node.outputs[0], info, _transparent_state(an, x, True))
        positions = [(a, k) for k, a in enumerate(info.axes)]
        an.shape_site(node, 3, node.outputs[0], [p for p, _ in positions], [k for _, k in positions], None)
        return
    if info.hidden:
        raise Refuse("Resize of grouped channels")
    an.set_info(node.outputs[0], info, _transparent_state(an, x, True))


def rule_pad(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    r = an.rank(x)
    pads = node.attr("pads")
    if pads is None and len(node.inputs) > 1:
        pads = an.const(node.inputs[1])
    if pads is None or r is None:
        raise Refuse("Pad amounts not constant")
    pads = list(np.asarray(pads).reshape(-1))
    axes_in = an.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    axes = [int(a) % r for a in axes_in.reshape(-1)] if axes_in is not None else list(range(r))
    n = len(axes)
    padded = {axes[i] for i in range(n) if pads[i] or pads[i + n]}
    if padded & set(info.axes) or (info.hidden and info.axes[-1] + 1 in padded):
        raise Refuse("Pad along the channels")
    mode = node.attr("mode", b"constant")
    constant = mode in (b"constant", "constant")
    an.set_info(node.outputs[0], info, _transparent_state(an, x, not constant))


def rule_pool(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    if info.axes != (1,) or info.hidden:
        raise Refuse(f"{node.op_type} input channels are not on axis 1")
    if len([o for o in node.outputs if o and an.graph.is_used(o)]) > 1:
        raise Refuse(f"{node.op_type} indices output is used")
    keep_const = node.op_type in ("MaxPool", "GlobalMaxPool", "GlobalAveragePool") or not node.attr("count_include_pad", 0)
    an.set_info(node.outputs[0], info, _transparent_state(an, x, keep_const))


def _reduce_axes(an: Analysis, node: Node, r: int) -> list[int] | None:
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        v = an.const(node.inputs[1])
        if v is None:
            return None
        axes = v.reshape(-1).tolist()
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else list(range(r))
    return sorted(int(a) % r for a in axes)


def rule_reduce(an: Analysis, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    info = an.info[x]
    r = an.rank(x)
    axes = _reduce_axes(an, node, r) if r is not None else None
    if axes is None:
        raise Refuse(f"{node.op_type} axes unknown")
    keepdims = node.attr("keepdims", 1)
    hit = [a for a in info.axes if a in axes]
    hidden_axis = info.axes[-1] + 1 if info.hidden else None
    if hit:
        if len(hit) != len(info.axes):
            raise Refuse(f"{node.op_type} over part of a multi-axis channel block")
        if node.op_type == "ReduceSum":
            an.sinks.append(Sink("sum", node.id, x, info.ids))
        elif node.op_type in ("ReduceMean", "ReduceSumSquare", "ReduceL2"):
            an.lossy(info.ids, f"{node.op_type} over the channels at {node.label}")
            an.sinks.append(Sink("lossy", node.id, x, info.ids, reason=f"{node.op_type} over the channels"))
        else:
            raise Refuse(f"{node.op_type} over the channels")
        return
    ids, hidden, state = info.ids, info.hidden, an.state_of(x) if an.values else None
    if hidden_axis is not None and hidden_axis in axes:
        ids, hidden = ids[..., 0], False
        if state is not None:
            state = np.where((state == state[..., :1]).all(axis=-1), state[..., 0], np.nan)
    if keepdims:
        new = info.axes
    else:
        new = tuple(a - sum(1 for b in axes if b < a) for a in info.axes)
    if state is not None and node.op_type not in ("ReduceMean", "ReduceMax", "ReduceMin"):
        state = np.where(state == 0, 0.0, np.nan) if node.op_type in ("ReduceSum", "ReduceL2", "ReduceL1",
                                                                     "ReduceSumSquare") else np.full(ids.shape, np.nan)
    an.set_info(out, ChanInfo(new, ids, hidden), state)


def rule_softmax(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    r = an.rank(x)
    old = an.graph.opsets.get("", 13) < 13  # before 13 softmax covers every axis from `axis` on
    axis = node.attr("axis", 1 if old else -1) % r
    covered = set(range(axis, r)) if old else {axis}
    if covered & set(info.axes) or (info.hidden and info.axes[-1] + 1 in covered):
        raise Refuse(f"{node.op_type} over the channels")
    an.set_info(node.outputs[0], info)


def _norm_sites(an: Analysis, node: Node, info: ChanInfo, x: str, first_axis: int, lossy_what: str) -> None:
    """Scale/bias of LayerNorm/RMSNorm broadcast over axes first_axis..; lossy when channels are normalized."""
    r = an.rank(x)
    if any(a >= first_axis for a in info.axes) or info.hidden:
        if info.hidden:
            raise Refuse(f"{lossy_what} over grouped channels")
        an.lossy(info.ids, f"{lossy_what} over the channels at {node.label}")
        an.sinks.append(Sink("lossy", node.id, x, info.ids, reason=f"{lossy_what} statistics"))
    for slot, role in ((1, SCALE), (2, ADD)):
        if len(node.inputs) > slot and node.inputs[slot]:
            arr = an.const(node.inputs[slot])
            if arr is None:
                raise Refuse(f"{lossy_what} scale/bias not constant")
            _const_sites(an, node, slot, arr, r - arr.ndim, info, role)


def rule_layernorm(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    r = an.rank(x)
    axis = node.attr("axis", -1) % r
    if any(o and an.graph.is_used(o) for o in node.outputs[1:]):
        raise Refuse(f"{node.op_type} statistics outputs are used")
    _norm_sites(an, node, info, x, axis, node.op_type)
    an.set_info(node.outputs[0], info)


def rule_skip_layernorm(an: Analysis, node: Node) -> None:
    """com.microsoft SkipLayerNormalization: LN(input + skip + bias) over the last axis; output 3
    is the sum (the residual stream)."""
    a, skip = node.inputs[0], node.inputs[1]
    ia, isk = an.info.get(a), an.info.get(skip)
    if ia is None or isk is None or ia.axes != isk.axes or ia.ids.shape != isk.ids.shape or ia.hidden or isk.hidden:
        raise Refuse("SkipLayerNormalization input and skip do not carry the same channels")
    if any(o and an.graph.is_used(o) for o in node.outputs[1:3]):
        raise Refuse("SkipLayerNormalization statistics outputs are used")
    an.uf.union(ia.ids, isk.ids)
    r = an.rank(a)
    roles = {2: SCALE, 3: ADD, 4: ADD}
    if r - 1 in ia.axes:
        an.lossy(ia.ids, f"SkipLayerNormalization over the channels at {node.label}")
        an.sinks.append(Sink("lossy", node.id, a, ia.ids, reason="SkipLayerNormalization statistics"))
    for slot, role in roles.items():
        if len(node.inputs) > slot and node.inputs[slot]:
            arr = an.const(node.inputs[slot])
            if arr is None:
                raise Refuse("SkipLayerNormalization parameters not constant")
            _const_sites(an, node, slot, arr, r - arr.ndim, ia, role)
    an.set_info(node.outputs[0], ia)
    if len(node.outputs) > 3 and node.outputs[3]:
        state = None
        if an.values:
            bias = an.const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
            state = an.state_of(a) + an.state_of(skip)
            if bias is not None:
                state = state + _per_channel_values(bias, r - bias.ndim, ia, r)
        an.set_info(node.outputs[3], ia, state)


def rule_groupnorm(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    if info.axes != (1,) or info.hidden:
        raise Refuse("GroupNormalization input channels are not on axis 1")
    G = node.attr("num_groups")
    C = info.ids.size
    if not G or C % G:
        raise Refuse("GroupNormalization groups do not divide the channels")
    rows = info.ids.reshape(G, C // G)
    an.uf.union_lines(rows, 1)  # a group is removed whole: the other groups' statistics stay exact
    an.tag(rows, "groupnorm")
    an.attr_sites.append(AttrSite(node.id, "num_groups", node.outputs[0], 0, C // G))
    state_scale = {}
    for slot, role in ((1, SCALE), (2, ADD)):
        arr = an.const(node.inputs[slot])
        if arr is None:
            raise Refuse("GroupNormalization scale/bias not constant")
        if arr.size == C:
            an.const_sites.append(ConstSite(node.id, slot, 0, info.ids[:, None], role))
            state_scale[slot] = arr.reshape(-1).astype(np.float64)
        elif arr.size == G:
            an.const_sites.append(ConstSite(node.id, slot, 0, rows, role))
            state_scale[slot] = np.repeat(arr.reshape(-1).astype(np.float64), C // G)
        else:
            raise Refuse("GroupNormalization scale/bias size is neither C nor G")
    state = None
    if an.values:
        s = an.state_of(x).reshape(G, C // G)
        flat = (s == s[:, :1]).all(axis=1) & ~np.isnan(s[:, 0])  # a constant group normalizes to 0
        state = np.where(np.repeat(flat, C // G), state_scale[2], np.nan)
    an.set_info(node.outputs[0], info, state)


def rule_instancenorm(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    if info.axes != (1,):
        raise Refuse("InstanceNormalization input channels are not on axis 1")
    rows = info.ids.reshape(info.ids.shape[0], -1)
    if info.hidden:
        an.uf.union_lines(info.ids, info.ids.ndim - 1)
        an.tag(info.ids, "groupnorm")
    for slot, role in ((1, SCALE), (2, ADD)):
        arr = an.const(node.inputs[slot])
        if arr is None or arr.size != rows.shape[0]:
            raise Refuse("InstanceNormalization scale/bias not constant per channel")
        an.const_sites.append(ConstSite(node.id, slot, 0, rows, role))
    state = None
    if an.values:
        s = an.state_of(x).reshape(rows.shape)
        flat = (s == s[:, :1]).all(axis=1) & ~np.isnan(s[:, 0])
        bias = an.const(node.inputs[2]).astype(np.float64)
        state = np.where(flat, bias, np.nan)[:, None].repeat(rows.shape[1], axis=1).reshape(info.ids.shape)
    an.set_info(node.outputs[0], info, state)


def rule_batchnorm(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    if info.axes != (1,) or info.hidden or any(o and an.graph.is_used(o) for o in node.outputs[1:]):
        raise Refuse("BatchNormalization not in inference form over axis 1")
    vals = []
    for slot in range(1, 5):
        arr = an.const(node.inputs[slot])
        if arr is None or arr.size != info.ids.size:
            raise Refuse("BatchNormalization parameters not constant per channel")
        an.const_sites.append(ConstSite(node.id, slot, 0, info.ids[:, None], ADD if slot == 2 else SCALE))
        vals.append(arr.astype(np.float64))
    state = None
    if an.values:
        scale, bias, mean, var = vals
        state = (an.state_of(x) - mean) / np.sqrt(var + node.attr("epsilon", 1e-5)) * scale + bias
    an.set_info(node.outputs[0], info, state)


def rule_concat(an: Analysis, node: Node) -> None:
    out = node.outputs[0]
    R = an.rank(out)
    axis = node.attr("axis") % R
    infos = [an.info.get(t) for t in node.inputs]
    first = next(i for i in infos if i is not None)
    if axis in first.axes:
        k = first.axes.index(axis)
        if len(first.axes) > 1 or first.hidden:
            # concatenating along one dim of a multi-dim block: that dim must not shrink
            parts = []
            for t, i in zip(node.inputs, infos):
                if i is None or i.axes != first.axes or i.hidden != first.hidden:
                    raise Refuse("Concat of channel blocks with different layouts")
                an.uf.union_lines(i.ids, k)
                parts.append(i.ids)
            ids = np.concatenate(parts, axis=k)
            an.add_multi(ids, first.hidden)
            an.set_info(out, ChanInfo(first.axes, ids, first.hidden))
            return
        parts, states = [], []
        for t, i in zip(node.inputs, infos):
            if i is not None and (i.axes != first.axes or i.hidden):
                raise Refuse("Concat inputs carry channels on different axes")
            if i is None:
                shape = an.shape(t)
                if shape is None:
                    raise Refuse(f"shape of Concat input '{t}' unknown")
                fresh = an.new_ids(shape[axis])
                an.poison(fresh, f"Concat at {node.label} joins the untraced tensor '{t}'")
                parts.append(fresh)
                states.append(np.full(fresh.shape, np.nan))
            else:
                parts.append(i.ids)
                states.append(an.state_of(t) if an.values else np.full(i.ids.shape, np.nan))
        ids = np.concatenate(parts)
        an.set_info(out, ChanInfo(first.axes, ids), np.concatenate(states) if an.values else None)
        return
    # along another axis: every input must carry the same channels
    for t, i in zip(node.inputs, infos):
        if i is None or i.axes != first.axes or i.ids.shape != first.ids.shape or i.hidden != first.hidden:
            raise Refuse("Concat along a non-channel axis of tensors with different channels")
        an.uf.union(first.ids, i.ids)
    state = None
    if an.values:
        ss = [an.state_of(t) for t in node.inputs]
        state = np.where(np.all([s == ss[0] for s in ss], axis=0), ss[0], np.nan)
    an.set_info(out, first, state)


def _split_sizes(an: Analysis, node: Node, dim_size: int) -> list[int]:
    n = len(node.outputs)
    split = node.attr("split")
    if split is None and len(node.inputs) > 1 and node.inputs[1]:
        v = an.const(node.inputs[1])
        if v is None:
            raise Refuse("Split sizes not constant")
        split = v.reshape(-1).tolist()
    if split is None:
        size = -(-dim_size // n)
        split = [size] * (n - 1) + [dim_size - size * (n - 1)]
    if sum(split) != dim_size:
        raise Refuse("Split sizes do not add up")
    return [int(s) for s in split]


def rule_split(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    r = an.rank(x)
    axis = node.attr("axis", 0) % r
    if axis not in info.axes:
        if info.hidden and axis == info.axes[-1] + 1:
            raise Refuse("Split along grouped channels")
        for o in node.outputs:
            if o:
                an.set_info(o, info, an.state_of(x) if an.values else None)
        return
    k = info.axes.index(axis)
    sizes = _split_sizes(an, node, info.dims[k])
    offsets = np.cumsum([0] + sizes)
    multi = len(info.axes) > 1 or info.hidden
    if multi:
        an.uf.union_lines(info.ids, k)
    for i, o in enumerate(node.outputs):
        if not o:
            continue
        sl = [slice(None)] * info.ids.ndim
        sl[k] = slice(int(offsets[i]), int(offsets[i + 1]))
        an.set_info(o, ChanInfo(info.axes, info.ids[tuple(sl)], info.hidden),
                    an.state_of(x)[tuple(sl)] if an.values else None)
    if not multi:
        an.axis_sites.append(AxisSite("split", node.id, x, k, {"sizes": sizes}))


def rule_slice(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    info = an.info[x]
    r = an.rank(x)
    shape = an.shape(x)
    if len(node.inputs) < 3:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        vals = [an.const(t) if t else None for t in node.inputs[1:5]] + [None] * 4
        starts, ends, axes, steps = vals[0], vals[1], vals[2], vals[3]
        if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] and axes is None) \
                or (len(node.inputs) > 4 and node.inputs[4] and steps is None):
            if _chunk_of_channels(an, node, info, r):
                return
            if any(t in an._tainted for t in node.inputs[1:]):
                raise Refuse("Slice bounds computed from the channel count are not torch.chunk's")
            if any(a in info.axes for a in range(r)):
                axes_c = an.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
                if axes_c is None or any(int(a) % r in info.axes for a in axes_c.reshape(-1)):
                    raise Refuse("Slice bounds on the channels are computed at run time (run cleanup first)")
            an.set_info(node.outputs[0], info, an.state_of(x) if an.values else None)
            return
    starts = [int(v) for v in np.asarray(starts).reshape(-1)]
    ends = [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = [int(a) % r for a in np.asarray(axes).reshape(-1)] if axes is not None else list(range(len(starts)))
    steps = [int(v) for v in np.asarray(steps).reshape(-1)] if steps is not None else [1] * len(starts)
    ids, state = info.ids, an.state_of(x) if an.values else None
    for i, a in enumerate(axes):
        if info.hidden and a == info.axes[-1] + 1:
            raise Refuse("Slice of grouped channels")
        if a not in info.axes:
            continue
        k = info.axes.index(a)
        n = info.dims[k]
        s, e, st = slice(starts[i], ends[i], steps[i]).indices(n)
        sl = [slice(None)] * ids.ndim
        sl[k] = slice(s, e, st)
        if len(info.axes) > 1 or info.hidden:
            an.uf.union_lines(info.ids, k)  # slicing one dim of a block: that dim must not shrink
        elif st != 1:
            raise Refuse("strided Slice of the channels")
        else:
            an.axis_sites.append(AxisSite("slice", node.id, x, k, {"index": i, "start": s, "end": e, "n": n}))
        ids = ids[tuple(sl)]
        if state is not None:
            state = state[tuple(sl)]
    if shape is not None and any(ids.shape[k] == 0 for k in range(len(info.axes))):
        raise Refuse("empty Slice of the channels")
    an.set_info(node.outputs[0], ChanInfo(info.axes, ids, info.hidden), state)


def _int_fn(an: Analysis, t: str, depth: int = 0):
    """A 1-element int tensor as (tensor, axis, f): f(n) is its value when dim `axis` of `tensor`
    is n. Covers Shape -> Gather -> Add/Sub/Mul/Div by constants (torch.chunk's bounds)."""
    if depth > 12:
        return None
    c = an.const(t)
    if c is not None:
        return (None, None, lambda n, v=int(c.reshape(-1)[0]): v) if c.size == 1 and c.dtype.kind in "iu" else None
    node = an.graph.producer(t)
    if node is None:
        return None
    if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze") or (node.op_type == "Concat" and len(node.inputs) == 1):
        return _int_fn(an, node.inputs[0], depth + 1)
    if node.op_type == "Gather":
        e = an.sym(t)
        if e and len(e) == 1 and e[0][0] == "d":
            return (e[0][1], e[0][2], lambda n: n)
        return None
    if node.op_type in INT_ARITH and len(node.inputs) == 2:
        a, b = _int_fn(an, node.inputs[0], depth + 1), _int_fn(an, node.inputs[1], depth + 1)
        if a is None or b is None or (a[0] and b[0] and (a[0], a[1]) != (b[0], b[1])):
            return None
        src = a if a[0] else b
        op = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
              "Div": lambda x, y: int(x / y) if y else 0}[node.op_type]
        return (src[0], src[1], lambda n, fa=a[2], fb=b[2]: op(fa(n), fb(n)))
    return None


def _chunk_of_channels(an: Analysis, node: Node, info: ChanInfo, r: int) -> bool:
    """Slice bounds computed from the sliced tensor's own channel count, as torch.chunk exports
    them: bounds at multiples of n/k. Chunks then shrink together: position p of every chunk is
    one unit, and the computed bounds follow any removal by themselves."""
    if len(node.inputs) < 4 or not node.inputs[3] or (len(node.inputs) > 4 and node.inputs[4]):
        return False
    axes = an.const(node.inputs[3])
    if axes is None or axes.size != 1 or len(info.axes) != 1 or info.hidden or int(axes[0]) % r != info.axes[0]:
        return False
    fs, fe = _int_fn(an, node.inputs[1]), _int_fn(an, node.inputs[2])
    x = node.inputs[0]
    if fs is None or fe is None or any(f[0] not in (None, x) for f in (fs, fe)):
        return False
    n = info.ids.size
    s, e = fs[2](n), fe[2](n)
    if not (0 <= s < e <= n) or n % (e - s) or s % (e - s):
        return False
    k, c = n // (e - s), e - s
    for m in range(1, 4):  # the bounds must stay at the same chunk for smaller sizes
        n2 = n - k * m
        if n2 <= 0 or fs[2](n2) != s // c * (n2 // k) or fe[2](n2) != e // c * (n2 // k):
            return False
    for j in range(1, k):
        an.uf.union(info.ids[:c], info.ids[j * c:(j + 1) * c])
    state = an.state_of(x)[s:e] if an.values else None
    an.set_info(node.outputs[0], ChanInfo(info.axes, info.ids[s:e]), state)
    return True


def rule_gather(an: Analysis, node: Node) -> None:
    x = node.inputs[0]
    if node.inputs[1] in an.info:
        raise Refuse("Gather indices carry channels")
    info = an.info[x]
    r = an.rank(x)
    axis = node.attr("axis", 0) % r
    idx = an.const(node.inputs[1])
    ir = an.rank(node.inputs[1])
    if ir is None:
        raise Refuse("Gather index rank unknown")
    if axis not in info.axes:
        if info.hidden and axis == info.axes[-1] + 1:
            raise Refuse("Gather of grouped channels")
        new = tuple(a if a < axis else a + ir - 1 for a in info.axes)
        an.set_info(node.outputs[0], ChanInfo(new, info.ids, info.hidden), an.state_of(x) if an.values else None)
        return
    if idx is None:
        raise Refuse("Gather along the channels with computed indices")
    k = info.axes.index(axis)
    n = info.dims[k]
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    ids = np.take(info.ids, idx, axis=k)
    state = np.take(an.state_of(x), idx, axis=k) if an.values else None
    if len(info.axes) > 1 or info.hidden:
        an.uf.union_lines(info.ids, k)
    elif idx.ndim != 1:
        an.poison(ids, f"Gather at {node.label} picks single channels")
        return
    else:
        an.axis_sites.append(AxisSite("gather", node.id, x, k, {"indices": idx}))
    new = list(info.axes)
    if idx.ndim == 0:
        if len(info.axes) == 1:
            an.poison(ids, f"Gather at {node.label} picks single channels")
            return
        new.pop(k)
        new = tuple(a if a < axis else a - 1 for a in new)
    an.set_info(node.outputs[0], ChanInfo(tuple(new), ids, info.hidden), state)


def rule_mha(an: Analysis, node: Node) -> None:
    """Fused attention on [B, S, H*D] inputs: heads are removed whole (Q, K, V and the output)."""
    if node.domain == MS:
        heads = node.attr("num_heads")
        extra = [t for t in node.inputs[3:] if t]
        if len(node.inputs) > 3 and node.inputs[3]:
            raise Refuse("MultiHeadAttention with a packed bias")
        if len(node.inputs) > 6 and any(node.inputs[6:]):
            raise Refuse("MultiHeadAttention with a KV cache")
    else:
        heads = node.attr("q_num_heads")
        if node.attr("kv_num_heads") != heads:
            raise Refuse("Attention with grouped KV heads")
        extra = [t for t in node.inputs[3:] if t]
    if any(t in an.info for t in extra) or any(o and an.graph.is_used(o) for o in node.outputs[1:]):
        raise Refuse(f"{node.op_type} with extra channel inputs or outputs")
    infos = [an.info.get(t) for t in node.inputs[:3]]
    ranks = [an.rank(t) for t in node.inputs[:3]]
    if any(i is None for i in infos) or any(r != 3 for r in ranks) or any(i.axes != (2,) or i.hidden for i in infos):
        raise Refuse(f"{node.op_type} inputs are not all traced [batch, seq, heads*dim]")
    q, k, v = (i.ids.reshape(heads, -1) for i in infos)
    if q.shape != k.shape:
        raise Refuse("Q and K head sizes differ")
    an.uf.union(q, k)
    an.uf.union_lines(q, 1)
    an.uf.union_lines(v, 1)
    an.uf.union(q[:, 0], v[:, 0])
    an.tag(q, "head")
    # the output is a convex combination of V: a zero V channel stays zero
    state = np.where(an.state_of(node.inputs[2]) == 0, 0.0, np.nan) if an.values else None
    an.set_info(node.outputs[0], infos[2], state)
    for attr in (["num_heads"] if node.domain == MS else ["q_num_heads", "kv_num_heads"]):
        an.attr_sites.append(AttrSite(node.id, attr, node.outputs[0], 0, v.shape[1]))


def rule_scatternd(an: Analysis, node: Node) -> None:
    """ScatterND(data, indices, updates) writing slices along data's leading `q` axes (a strided
    copy, as exports of `out[..., 0::2] = ...` write it): the indexed dims must never shrink (their
    lines are units, e.g. one head's dims), the other axes couple data and updates one to one."""
    data, idx, upd = node.inputs[:3]
    if idx in an.info or node.attr("reduction", "none") not in ("none", b"none"):
        raise Refuse("ScatterND with reduction or traced indices")
    di, ui = an.info.get(data), an.info.get(upd)
    q = (an.shape(idx) or [None])[-1]
    ri = an.rank(idx)
    if di is None or ui is None or q is None or ri is None or di.hidden or ui.hidden:
        raise Refuse("ScatterND of channels that are not traced on both data and updates")
    lead = ri - 1  # updates = indices.shape[:-1] + data.shape[q:]
    for k, a in enumerate(di.axes):
        if a < q:
            an.uf.union_lines(di.ids, k)
    for k, a in enumerate(ui.axes):
        if a < lead:
            an.uf.union_lines(ui.ids, k)
    dk = [k for k, a in enumerate(di.axes) if a >= q]
    uk = [k for k, a in enumerate(ui.axes) if a >= lead]
    if [di.axes[k] - q for k in dk] != [ui.axes[k] - lead for k in uk] or not dk:
        raise Refuse("ScatterND data and updates carry channels on different axes")
    sd = np.moveaxis(di.ids, dk, list(range(len(dk))))
    su = np.moveaxis(ui.ids, uk, list(range(len(uk))))
    sd = sd.reshape(sd.shape[:len(dk)] + (-1,))[..., 0]
    su = su.reshape(su.shape[:len(uk)] + (-1,))[..., 0]
    if sd.shape != su.shape:
        raise Refuse("ScatterND data and updates channel counts differ")
    an.uf.union(sd, su)
    state = None
    if an.values:
        zd = an.state_of(data) == 0
        zu = an.state_of(upd) == 0
        zd = np.moveaxis(zd, dk, list(range(len(dk)))).reshape(sd.shape + (-1,)).all(axis=-1)
        zu = np.moveaxis(zu, uk, list(range(len(uk)))).reshape(su.shape + (-1,)).all(axis=-1)
        both = np.moveaxis(np.broadcast_to((zd & zu).reshape(sd.shape + (1,) * (di.ids.ndim - len(dk))),
                                           np.moveaxis(di.ids, dk, list(range(len(dk)))).shape),
                           list(range(len(dk))), dk)
        state = np.where(both, 0.0, np.nan)
    an.set_info(node.outputs[0], di, state)


SOURCES = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SYM_OPS = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice"}
SHAPE_CONSUMERS = {("Reshape", 1), ("Expand", 1), ("Resize", 3)}
INT_ARITH = {"Add", "Sub", "Mul", "Div"}

RULES: dict[tuple[str, str], Callable[[Analysis, Node], None]] = {}
for _op in _UNARY:
    RULES[("", _op)] = rule_unary
for _op in ("FastGelu", "QuickGelu", "Gelu"):
    RULES[(MS, _op)] = rule_unary
for _op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where"):
    RULES[("", _op)] = rule_elementwise
RULES.update({
    ("", "Clip"): rule_clip,
    ("", "Conv"): rule_conv, ("", "ConvTranspose"): rule_conv, ("", "Gemm"): rule_gemm, ("", "MatMul"): rule_matmul,
    ("", "Transpose"): rule_transpose, ("", "Reshape"): rule_reshape, ("", "Flatten"): rule_flatten,
    ("", "Squeeze"): rule_squeeze, ("", "Unsqueeze"): rule_squeeze, ("", "Expand"): rule_expand, ("", "Tile"): rule_tile,
    ("", "Resize"): rule_resize, ("", "Upsample"): rule_resize, ("", "Pad"): rule_pad,
    ("", "MaxPool"): rule_pool, ("", "AveragePool"): rule_pool, ("", "LpPool"): rule_pool,
    ("", "GlobalAveragePool"): rule_pool, ("", "GlobalMaxPool"): rule_pool,
    ("", "Softmax"): rule_softmax, ("", "LogSoftmax"): rule_softmax,
    ("", "LayerNormalization"): rule_layernorm, ("", "RMSNormalization"): rule_layernorm,
    (MS, "SimplifiedLayerNormalization"): rule_layernorm, ("", "SimplifiedLayerNormalization"): rule_layernorm,
    ("", "GroupNormalization"): rule_groupnorm, ("", "InstanceNormalization"): rule_instancenorm,
    ("", "BatchNormalization"): rule_batchnorm,
    ("", "Concat"): rule_concat, ("", "Split"): rule_split, ("", "Slice"): rule_slice, ("", "Gather"): rule_gather,
    (MS, "MultiHeadAttention"): rule_mha, ("", "Attention"): rule_mha,
    ("", "ScatterND"): rule_scatternd,
    (MS, "SkipLayerNormalization"): rule_skip_layernorm, (MS, "SkipSimplifiedLayerNormalization"): rule_skip_layernorm,
})
for _op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceSumSquare", "ReduceLogSumExp"):
    RULES[("", _op)] = rule_reduce

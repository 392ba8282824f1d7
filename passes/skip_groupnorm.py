"""Residual and time-embedding Adds into the channels-last GroupNorm that reads them (ORT's CUDA EP)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vidcc.ir import Graph, Node, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import emit, ensure_opset, remove_dead

from ._fusion import MS, accepts, static
from ._layout import LAYOUT_OPS, Layout, NotLayout, Plan, chain_back, emit_plan, follow, follow_back
from .layout_nhwc import _tidy


@dataclass(frozen=True)
class FuseSkipGroupNorm(Pass):
    """Fold the Add that a channels-last com.microsoft GroupNorm reads into one com.microsoft SkipGroupNorm
    (ORT's CUDA kernel: s = x + skip [+ bias], y = GroupNorm(s), with the sum s as an optional second
    output for the Add's other readers). Run after layout-nhwc, on static shapes.

    Rewrite cases (an Add, then only data movement -- Transpose/Reshape/Unsqueeze/Squeeze -- into a
    GroupNorm(channels_last=1) over [N, H, W, C]):
    - both inputs have the sum's shape (a residual `x + h`): x and skip are each input moved into the
      GroupNorm's layout; where an input is the NCHW view of an NHWC tensor (an NhwcConv's output) that
      is a Reshape, no data moved;
    - one input broadcasts (`h + time_emb_proj(temb)[:, :, None, None]`): it becomes the skip of shape
      (N, C), which the kernel broadcasts over H and W;
    - an input that is itself Add(z, per-channel constant) (a projection's bias) becomes z, the constant
      the kernel's bias;
    - the Add's other readers (and those of the data movement after it) read the sum output, moved back.
    Refused with the reason: a broadcast skip that varies along H or W of the norm's input (SVD's
    temporal ResBlocks add a per-frame embedding where the 5-D GroupNorm runs over [N, F, H*W, C]: the
    kernel takes a skip of shape (N, H, W, C), (N, 1, 1, C) or (N, C) only, ORT contrib_ops/cuda/
    diffusion/group_norm.cc); a rewrite that would move more data than it saves (more full-size
    Transposes than the unfused form has, e.g. both inputs of the Add needing their own); shapes that
    are not static.
    """

    name = "fuse-skip-groupnorm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not accepts(ctx, "SkipGroupNorm", MS):
            return PassResult(False, {"SkipGroupNorm": "skipped: target has no com.microsoft SkipGroupNorm"})
        candidates, fused, with_bias, with_sum, details = 0, 0, 0, 0, []
        for gn in graph.nodes_by_op("GroupNorm", MS):
            if gn.id not in graph.nx:
                continue
            add = _add_before(graph, gn.inputs[0])
            if add is None:
                continue
            candidates += 1
            plan = _plan(graph, gn, add)
            if isinstance(plan, str):
                details.append({"kind": "refused", "pattern": "SkipGroupNorm", "node": gn.name or gn.outputs[0],
                                "reason": plan})
                continue
            _rewrite(graph, gn, add, plan)
            fused += 1
            with_bias += plan.bias is not None
            with_sum += bool(plan.sums)
            details.append({"kind": "fused", "pattern": "SkipGroupNorm", "node": gn.name or gn.outputs[0],
                            "form": plan.form})
        cancelled = _tidy(graph) if fused else 0
        stats = {"SkipGroupNorm": f"{fused}/{candidates}"} if candidates else {}
        if fused:
            stats.update({"SkipGroupNorm with bias": with_bias, "SkipGroupNorm with sum output": with_sum,
                          "Transpose pairs cancelled": cancelled})
        return PassResult(bool(fused), stats, details)


@dataclass
class _Input:
    """One Add input as the kernel takes it: `source` moved by `plan` (a full-size input; `own` is its data
    movement into the Add, `dead` the part of it that dies with the Add) or turned into an (N, C) skip
    by `small` (a broadcast one)."""

    source: str
    plan: Plan | None = None
    own: list[Node] = field(default_factory=list)
    dead: list[Node] = field(default_factory=list)
    small: tuple | None = None  # (its shape split in atoms, the N and C atoms in order, their sizes)


@dataclass
class _Plan:
    x: _Input
    skip: _Input
    bias: np.ndarray | None
    chain: list[Node]
    sums: list[tuple[str, Plan, list[tuple[Node, int]]]]  # tensor, from the sum output, its outside readers
    form: str


def _add_before(g: Graph, tensor: str) -> Node | None:
    """The Add a tensor comes from through data movement only, whatever the shapes."""
    while True:
        p = g.producer(tensor)
        if p is None:
            return None
        if p.op_type == "Add" and p.domain in ("", "ai.onnx"):
            return p
        if p.op_type not in LAYOUT_OPS or not p.inputs:
            return None
        tensor = p.inputs[0]


def _plan(g: Graph, gn: Node, add: Node) -> _Plan | str:
    x = gn.inputs[0]
    xs = g.type_of(x).shape
    if gn.attr("channels_last", 1) != 1 or xs is None or len(xs) != 4:
        return "the GroupNorm is not channels-last over [N, H, W, C] (layout-nhwc emits that form)"
    src, chain = chain_back(g, x)
    out = add.outputs[0]
    if src != out or not static(xs) or not static(g.type_of(out).shape):
        return "shapes are not static (compile with --static-shapes): the kernel needs the skip's shape known"
    inter = [out] + [n.outputs[0] for n in chain]
    if any(t in g.outputs for t in inter):
        return "the sum is a graph output"
    shape = tuple(g.type_of(out).shape)
    try:
        lay = follow(g, shape, chain)
    except NotLayout as exc:
        return f"the data movement after the Add is not a plain layout change ({exc})"

    # readers of the sum (and of the data movement after it) other than the way into the norm
    sums = []
    for i, t in enumerate(inter):
        nxt = chain[i] if i < len(chain) else gn
        outside = [(n, s) for n, s in g.consumers(t) if n is not nxt]
        if outside:
            try:
                back = follow_back(g, xs, chain[i:])
            except NotLayout as exc:
                return f"the sum's other readers cannot be served from the kernel's sum output ({exc})"
            sums.append((t, back.plan(), outside))

    inputs, broadcast = [], []
    for t in add.inputs:
        ts = g.type_of(t).shape
        if not static(ts) or len(ts) > len(shape):
            return f"input '{t}' of the Add has the shape {ts}"
        aligned = (1,) * (len(shape) - len(ts)) + tuple(ts)
        found = _full(g, t, chain, add) if aligned == shape else _broadcast_skip(lay, aligned, shape)
        if isinstance(found, str):
            return found
        (inputs if aligned == shape else broadcast).append(found if aligned == shape else _Input(t, small=found))
    if not inputs:
        return "neither input of the Add has the sum's shape"

    bias = None
    for inp in inputs:  # a per-channel constant added just before (a projection's bias) -> the kernel's bias
        found = _bias(g, inp, chain, add, xs[3])
        if found is not None:
            inp.source, inp.plan, bias, dead = found
            inp.dead += dead
            break

    if broadcast:
        xin, skip = inputs[0], broadcast[0]
    else:
        xin, skip = sorted(inputs, key=lambda i: i.plan.moves)
    moved_after = sum(i.plan.moves for i in inputs) + sum(p.moves for _, p, _ in sums)
    moved_before = sum(n.op_type == "Transpose" for n in chain) + \
        sum(n.op_type == "Transpose" for i in inputs for n in i.dead)
    if moved_after > moved_before:
        return (f"{moved_after} full-size Transposes into and out of the kernel's layout where the unfused form has "
                f"{moved_before} (inputs {', '.join(str(g.type_of(t).shape) for t in add.inputs)} into {list(xs)})")
    form = ("broadcast skip (N, C)" if broadcast else "residual") + (" + bias" if bias is not None else "") + \
        (" + sum output" if sums else "")
    return _Plan(xin, skip, bias, chain, sums, form)


def _full(g: Graph, t: str, chain: list[Node], add: Node) -> _Input | str:
    """A full-size Add input: from where its own data movement starts, moved into the norm's layout."""
    src, own = chain_back(g, t)
    try:
        plan = follow(g, g.type_of(src).shape, own + chain).plan()
    except NotLayout:
        src, own = t, []
        try:
            plan = follow(g, g.type_of(t).shape, chain).plan()
        except NotLayout as exc:
            return f"input '{t}' cannot be moved into the norm's layout ({exc})"
    # the input's own data movement dies with the Add when each step has no other reader
    dead, reader = [], add
    for n in reversed(own):
        if [c for c in g.consumer_nodes(n.outputs[0])] != [reader] or n.outputs[0] in g.outputs:
            break
        dead.append(n)
        reader = n
    return _Input(src, plan=plan, own=own, dead=dead)


def _broadcast_skip(lay: Layout, aligned: tuple, shape: tuple):
    """How a broadcast Add input becomes the kernel's (N, C) skip, or why it cannot: it may vary only along
    the norm input's N and C (atoms of the layout change into [N, H, W, C])."""
    if lay.spans or lay.opaque is not None:
        return "the data movement after the Add merges dims the broadcast input does not share"
    bsize = {}
    for i, atoms in enumerate(lay.src):
        for a in atoms:
            bsize[a] = lay.size[a] if aligned[i] == shape[i] else 1
    wrong = [k for k, d in enumerate(lay.dims) if k in (1, 2) and any(bsize[a] > 1 for a in d)]
    if wrong:
        return (f"the skip {list(aligned)} varies along axis {wrong[0]} of the norm's input {list(lay.shape)}: "
                "ORT's SkipGroupNorm takes a skip of shape (N, H, W, C), (N, 1, 1, C) or (N, C) only")
    target = lay.dims[0] + lay.dims[3]
    return [bsize[a] for a in lay.order], [lay.order.index(a) for a in target], [lay.size[a] for a in target]


def _bias(g: Graph, inp: _Input, chain: list[Node], add: Node, channels: int):
    """inp's source is Add(z, c), c a constant that varies only along the norm's channels, read only on
    the way into this Add (which all dies with it): (where z's data movement starts, its plan, c as [C],
    the nodes that die with the Add)."""
    p = g.producer(inp.source)
    if p is None or p.op_type != "Add" or p.domain not in ("", "ai.onnx") or inp.source in g.outputs \
            or len(inp.dead) != len(inp.own) or g.consumer_nodes(inp.source) != [inp.own[0] if inp.own else add]:
        return None
    consts = [t for t in p.inputs if g.constant(t) is not None]
    if len(consts) != 1 or len(p.inputs) != 2:
        return None
    z = next(t for t in p.inputs if t != consts[0])
    zs, c = g.type_of(z).shape, np.asarray(g.constant(consts[0]))
    if zs is None or tuple(zs) != tuple(g.type_of(inp.source).shape) or c.ndim > len(zs) \
            or not np.issubdtype(c.dtype, np.floating):
        return None
    try:
        lay = follow(g, zs, inp.own + chain)
    except NotLayout:
        return None
    aligned = (1,) * (len(zs) - c.ndim) + c.shape
    if lay.spans or lay.opaque is not None or any(a not in (1, d) for a, d in zip(aligned, zs)):
        return None
    varying = [a for i, atoms in enumerate(lay.src) if aligned[i] != 1 for a in atoms]
    channel = lay.dims[3]
    if not set(varying) <= set(channel) or channel != [a for a in lay.order if a in channel]:
        return None
    # c varies along (some of) the channel atoms, which lie in memory order: spread it over all of them
    sizes = [lay.size[a] if a in varying else 1 for a in channel]
    bias = np.broadcast_to(c.reshape(sizes), [lay.size[a] for a in channel]).reshape(channels)
    moved = _full(g, z, inp.own + chain, p)  # z from where its own data movement starts
    if isinstance(moved, str):
        return None
    return moved.source, moved.plan, np.ascontiguousarray(bias, dtype=np.float32), [p, *moved.dead]


def _rewrite(g: Graph, gn: Node, add: Node, plan: _Plan) -> None:
    xs = tuple(g.type_of(gn.inputs[0]).shape)
    dtype = g.type_of(gn.inputs[0]).dtype
    x = emit_plan(g, plan.x.source, plan.x.plan, add, "x")
    if plan.skip.plan is not None:
        skip = emit_plan(g, plan.skip.source, plan.skip.plan, add, "skip")
    else:
        skip = _emit_small(g, plan.skip, add, (xs[0], xs[3]), dtype)
    inputs = [x, gn.inputs[1], gn.inputs[2], skip]
    if plan.bias is not None:
        inputs.append(g.add_constant(plan.bias, f"{gn.name or 'groupnorm'}.skip_bias"))
    node = emit(g, "SkipGroupNorm", inputs, like=gn, domain=MS, suffix="SkipGroupNorm", attrs=dict(gn.attrs),
                outputs=2 if plan.sums else 1, types=[TensorType(dtype, xs)] * (2 if plan.sums else 1))
    ensure_opset(g, MS, 1)
    g.replace_all_uses(gn.outputs[0], node.outputs[0])
    for t, back, outside in plan.sums:
        moved = emit_plan(g, node.outputs[1], back, add, "sum")
        for reader, slot in outside:
            g.set_input(reader, slot, moved)
    dead = [gn, *reversed(plan.chain), add] + plan.x.dead + plan.skip.dead
    remove_dead(g, dead)


def _emit_small(g: Graph, inp: _Input, like: Node, nc: tuple, dtype: int) -> str:
    """A broadcast input as the (N, C) skip: its dims split as the layout change splits the sum's, the
    varying ones put in N, C order, spread over what it broadcasts along, then viewed as (N, C)."""
    atom_shape, order, expand = inp.small
    b, stem = inp.source, like.name or like.op_type

    def node(op, inputs, shape, suffix, attrs=None):
        return emit(g, op, inputs, like=like, suffix=f"skip_{suffix}", attrs=attrs,
                    types=[TensorType(dtype, tuple(shape))]).outputs[0]

    def const(values, suffix):
        return g.add_constant(np.array(values, np.int64), f"{stem}.skip_{suffix}")

    varying = [k for k in order if atom_shape[k] > 1]
    if varying != sorted(varying):  # the N and C dims lie the other way round in memory
        b = node("Reshape", [b, const(atom_shape, "atoms")], atom_shape, "atoms")
        perm = order + [k for k in range(len(atom_shape)) if k not in order]
        b = node("Transpose", [b], [atom_shape[k] for k in perm], "perm", {"perm": perm})
    sizes = [atom_shape[k] for k in order]
    if sizes != list(expand):  # constant along some of N (or C): spread it
        b = node("Reshape", [b, const(sizes, "split")], sizes, "split")
        b = node("Expand", [b, const(expand, "expand")], expand, "expand")
    return node("Reshape", [b, const(nc, "nc")], nc, "nc")


PASSES = [FuseSkipGroupNorm]

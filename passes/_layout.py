"""Layout algebra for chains of data-movement ops (Transpose, Reshape, Unsqueeze, Squeeze, Flatten) over
static shapes: any such chain moves elements as Reshape -> one Transpose -> Reshape, and this finds that
form, so a pass can tell whether two chains meet as a plain Reshape (no data moved) and emit the least.

A `Layout` follows the dims of a tensor through the chain as groups of "atoms": factors of the source
tensor's dims, kept in the source's memory order. A Transpose permutes the groups; a Reshape regroups
the atoms in logical order, splitting an atom where a new dim ends inside it (4 -> 2 x 2). A reshape
that would need a dim boundary inside an atom that does not divide is not a plain regrouping: the
chain is then not followed (`NotLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcc.ir import Graph, Node, TensorType
from vidcc.rewrite import emit

from ._fusion import static

LAYOUT_OPS = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


class NotLayout(Exception):
    pass


class Layout:
    def __init__(self, shape):
        if not static(shape):
            raise NotLayout(f"shape {shape} is not static")
        self.size: dict[int, int] = {}
        self.order: list[int] = []  # atoms in the source's memory order
        self.src: list[list[int]] = []  # per source dim, its atoms (major to minor)
        self.dims: list[list[int]] = []  # per current dim, its atoms
        self.spans: set[int] = set()  # atoms merged across source dims (src then says less)
        self.opaque: tuple[list[int], tuple] | None = None  # (atoms in order, shape) after a reshape that cuts atoms
        for d in shape:
            atoms = [self._new(d)] if d != 1 else []
            self.order += atoms
            self.src.append(list(atoms))
            self.dims.append(list(atoms))

    def _new(self, n: int) -> int:
        a = len(self.size)
        self.size[a] = n
        return a

    @property
    def shape(self) -> tuple[int, ...]:
        if self.opaque is not None:
            return self.opaque[1]
        return tuple(int(np.prod([self.size[a] for a in d], dtype=np.int64)) for d in self.dims)

    def transpose(self, perm) -> Layout:
        if self.opaque is not None:
            raise NotLayout(f"a transpose after a reshape to {self.opaque[1]} that splits no whole dims")
        self.dims = [self.dims[p] for p in perm]
        return self

    def reshape(self, shape) -> Layout:
        if not static(shape) or int(np.prod(shape, dtype=np.int64)) != int(np.prod(self.shape, dtype=np.int64)):
            raise NotLayout(f"reshape to {shape}")
        if self.opaque is not None:  # a reshape of a reshape
            self.opaque = (self.opaque[0], tuple(shape))
            return self
        queue = [a for d in self.dims for a in d]
        saved = (dict(self.size), list(self.order), [list(g) for g in self.src], set(self.spans))
        try:
            self.dims = self._regroup(list(queue), shape)
        except NotLayout:  # fine as the last step: the plan's final Reshape does it
            self.size, self.order, self.src, self.spans = saved
            self.opaque = (queue, tuple(shape))
        return self

    def _regroup(self, queue: list[int], shape) -> list[list[int]]:
        dims = []
        for s in shape:
            group, rest = [], s
            while rest > 1:
                a = queue.pop(0)
                n = self.size[a]
                if rest % n == 0:
                    group.append(a)
                    rest //= n
                elif n % rest == 0:
                    outer, inner = self._split(a, rest, n // rest)
                    group.append(outer)
                    queue.insert(0, inner)
                    rest = 1
                elif queue and self.order.index(queue[0]) == self.order.index(a) + 1:
                    queue.insert(0, self._merge(a, queue.pop(0)))  # contiguous in memory: one atom
                else:
                    raise NotLayout(f"reshape to {shape} cuts a dim of {n} at {rest}")
            dims.append(group)
        return dims

    def _split(self, a: int, outer: int, inner: int) -> tuple[int, int]:
        o, i = self._new(outer), self._new(inner)
        k = self.order.index(a)
        self.order[k:k + 1] = [o, i]
        for group in self.src:
            if a in group:
                j = group.index(a)
                group[j:j + 1] = [o, i]
        return o, i

    def _merge(self, a: int, b: int) -> int:
        m = self._new(self.size[a] * self.size[b])
        k = self.order.index(a)
        self.order[k:k + 2] = [m]
        for group in self.src:
            if a in group:
                group[group.index(a)] = m
                if b in group:
                    group.remove(b)
                else:
                    self.spans.add(m)  # one atom over two source dims
            elif b in group:
                group.remove(b)
        return m

    def apply(self, g: Graph, node: Node) -> Layout:
        """Follow one data-movement node (its output's static shape says where a Reshape goes)."""
        if node.op_type == "Transpose":
            perm = node.attr("perm") or list(range(len(self.dims)))[::-1]
            return self.transpose(list(perm))
        if node.op_type in LAYOUT_OPS:
            return self.reshape(g.type_of(node.outputs[0]).shape)
        raise NotLayout(f"{node.op_type} moves no data only")

    def plan(self) -> Plan:
        """The least Reshape -> Transpose -> Reshape that does what the chain did: atoms adjacent in both
        the source's memory order and the result's logical order are merged."""
        logical = self.opaque[0] if self.opaque is not None else [a for d in self.dims for a in d]
        pos = {a: i for i, a in enumerate(self.order)}
        blocks: list[list[int]] = []
        for a in logical:
            if blocks and pos[blocks[-1][-1]] + 1 == pos[a]:
                blocks[-1].append(a)
            else:
                blocks.append([a])
        by_memory = sorted(range(len(blocks)), key=lambda b: pos[blocks[b][0]])
        sizes = [int(np.prod([self.size[a] for a in blocks[b]], dtype=np.int64)) for b in by_memory]
        perm = [by_memory.index(b) for b in range(len(blocks))]
        return Plan(tuple(sizes), tuple(perm), self.shape)


@dataclass(frozen=True)
class Plan:
    """x -> Reshape(pre) -> Transpose(perm) -> Reshape(post): what a layout chain does."""

    pre: tuple[int, ...]
    perm: tuple[int, ...]
    post: tuple[int, ...]

    @property
    def moves(self) -> bool:
        """Whether data moves (a real Transpose), or the chain is a Reshape."""
        return list(self.perm) != sorted(self.perm)


def follow(g: Graph, shape, nodes: list[Node]) -> Layout:
    lay = Layout(shape)
    for n in nodes:
        lay.apply(g, n)
    return lay


def follow_back(g: Graph, shape, nodes: list[Node]) -> Layout:
    """The layout change that undoes `nodes` (in data-flow order), from the static `shape` of their output."""
    lay = Layout(shape)
    for n in reversed(nodes):
        if n.op_type == "Transpose":
            perm = n.attr("perm") or list(range(len(g.type_of(n.inputs[0]).shape)))[::-1]
            lay.transpose([int(k) for k in np.argsort(perm)])
        else:
            lay.reshape(g.type_of(n.inputs[0]).shape)
    return lay


def chain_back(g: Graph, tensor: str, stop=lambda t: False) -> tuple[str, list[Node]]:
    """Walk back from `tensor` through data-movement nodes with static shapes to the tensor they start
    from; the nodes in data-flow order. `stop(t)` ends the walk at t."""
    nodes: list[Node] = []
    while not stop(tensor):
        p = g.producer(tensor)
        if p is None or p.op_type not in LAYOUT_OPS or not p.inputs or not static(g.type_of(p.inputs[0]).shape) \
                or not static(g.type_of(p.outputs[0]).shape):
            break
        nodes.insert(0, p)
        tensor = p.inputs[0]
    return tensor, nodes


def emit_plan(g: Graph, x: str, plan: Plan, like: Node, suffix: str) -> str:
    """Emit a plan on x (only the parts that do something); returns the result."""
    dtype = g.type_of(x).dtype

    def reshape(t: str, shape, tag: str) -> str:
        if tuple(g.type_of(t).shape or ()) == tuple(shape):
            return t
        c = g.add_constant(np.array(shape, np.int64), f"{like.name or like.op_type}.{suffix}_{tag}")
        return emit(g, "Reshape", [t, c], like=like, suffix=f"{suffix}_{tag}",
                    types=[TensorType(dtype, tuple(shape))]).outputs[0]

    if not plan.moves:
        return reshape(x, plan.post, "view")
    t = reshape(x, plan.pre, "atoms")
    shape = tuple(plan.pre[p] for p in plan.perm)
    t = emit(g, "Transpose", [t], like=like, suffix=f"{suffix}_perm", attrs={"perm": list(plan.perm)},
             types=[TensorType(dtype, shape)]).outputs[0]
    return reshape(t, plan.post, "view")

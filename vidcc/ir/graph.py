"""vidcc's IR: operations as the nodes of a networkx.MultiDiGraph, each use of a tensor as an edge.

An edge runs producer -> consumer and carries the tensor name, the producer's output slot and the
consumer's input slot (slot -1 marks an implicit use by an If/Loop/Scan body). Graph inputs and
constants have no producing node; their uses are found through the consumer index. All changes go
through Graph's methods, which keep the edges and the indexes (op type, producer, consumers) in step.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np
import onnx
from onnx import AttributeProto, helper

from vidcc.ir.tensor import Constant, TensorType

IMPLICIT = -1  # input slot of an outer-scope tensor used inside a subgraph


@dataclass(eq=False)
class Node:
    """One operation. `attrs` holds onnx AttributeProtos so nothing is lost on a round trip;
    use `attr()` / `Graph.set_attr()` for plain values."""

    id: int
    op_type: str
    domain: str = ""
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attrs: dict[str, AttributeProto] = field(default_factory=dict)
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    implicit_inputs: tuple[str, ...] = ()  # outer-scope names read by subgraph attributes
    precision: str | None = None  # set by precision passes ("fp32", "fp16", "bf16")

    def attr(self, key: str, default: Any = None) -> Any:
        a = self.attrs.get(key)
        return default if a is None else helper.get_attribute_value(a)

    @property
    def label(self) -> str:
        """How errors and explain name the node."""
        return f"{self.name or '<unnamed>'} ({self.op_type}#{self.id})"

    def has_subgraphs(self) -> bool:
        return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in self.attrs.values())

    def __repr__(self) -> str:
        return f"Node({self.label}, in={self.inputs}, out={self.outputs})"


class Graph:
    """A mutable ONNX graph with indexes. `meta` keeps what the IR does not model (model-level fields,
    opset imports, functions, metadata) so that export is lossless."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.doc_string = ""
        self.nx = nx.MultiDiGraph()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.types: dict[str, TensorType] = {}
        self.constants: dict[str, Constant] = {}
        self.io_meta: dict[str, onnx.ValueInfoProto] = {}  # graph input/output ValueInfos as loaded
        self.opsets: dict[str, int] = {"": 18}
        self.meta: onnx.ModelProto = onnx.ModelProto()
        self.extra: dict[str, Any] = {}  # free slot for passes to leave facts for later passes/targets
        self._ids = itertools.count()
        self._order: dict[int, int] = {}  # node id -> insertion sequence, for a stable export order
        self._seq = itertools.count()
        self._producer: dict[str, tuple[int, int]] = {}
        self._uses: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self._by_op: dict[str, set[int]] = defaultdict(set)
        self._node_names: set[str] | None = None  # built on first unique_node_name()

    # ---- lookups -------------------------------------------------------------------------------
    def node(self, node_id: int) -> Node:
        return self.nx.nodes[node_id]["op"]

    @property
    def nodes(self) -> list[Node]:
        """Nodes in insertion order (not necessarily topological; see toposort())."""
        return [self.node(i) for i in sorted(self.nx.nodes, key=self._order.__getitem__)]

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def nodes_by_op(self, op_type: str, domain: str | None = None) -> list[Node]:
        found = (self.node(i) for i in sorted(self._by_op.get(op_type, ()), key=self._order.__getitem__))
        return [n for n in found if domain is None or n.domain == domain]

    def producer(self, tensor: str) -> Node | None:
        p = self._producer.get(tensor)
        return None if p is None else self.node(p[0])

    def producer_slot(self, tensor: str) -> tuple[Node, int] | None:
        p = self._producer.get(tensor)
        return None if p is None else (self.node(p[0]), p[1])

    def consumers(self, tensor: str) -> list[tuple[Node, int]]:
        """(node, input slot) for each use of the tensor, in a stable order; slot -1 = implicit use."""
        uses = sorted(self._uses.get(tensor, ()), key=lambda u: (self._order[u[0]], u[1]))
        return [(self.node(i), s) for i, s in uses]

    def consumer_nodes(self, tensor: str) -> list[Node]:
        return list(dict.fromkeys(n for n, _ in self.consumers(tensor)))

    def is_used(self, tensor: str) -> bool:
        return bool(self._uses.get(tensor)) or tensor in self.outputs

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def constant(self, tensor: str) -> np.ndarray | None:
        c = self.constants.get(tensor)
        return None if c is None else c.array

    def type_of(self, tensor: str) -> TensorType:
        if tensor in self.constants:
            return self.constants[tensor].type
        return self.types.get(tensor, TensorType())

    def tensor_names(self) -> set[str]:
        names = set(self.inputs) | set(self.constants) | set(self._producer)
        return names

    def predecessors(self, node: Node) -> list[Node]:
        return [self.node(i) for i in self.nx.predecessors(node.id)]

    def successors(self, node: Node) -> list[Node]:
        return [self.node(i) for i in self.nx.successors(node.id)]

    def toposort(self) -> list[Node]:
        """A topological order that keeps insertion order wherever it can: deterministic."""
        order = nx.lexicographical_topological_sort(self.nx, key=self._order.__getitem__)
        return [self.node(i) for i in order]

    def op_histogram(self) -> Counter:
        return Counter({op: len(ids) for op, ids in self._by_op.items() if ids})

    # ---- names ---------------------------------------------------------------------------------
    def _name_taken(self, name: str) -> bool:
        # dict lookups only: passes call unique_name once per new tensor
        return (name in self._producer or name in self.constants or name in self._uses or name in self.types
                or name in self.io_meta or name in self.inputs)

    def unique_name(self, hint: str) -> str:
        if not self._name_taken(hint):
            return hint
        for i in itertools.count(1):
            candidate = f"{hint}_{i}"
            if not self._name_taken(candidate):
                return candidate
        raise AssertionError

    def unique_node_name(self, hint: str) -> str:
        if self._node_names is None:
            self._node_names = {n.name for n in self.nodes}
        taken = self._node_names
        name = hint
        i = 0
        while name in taken:
            i += 1
            name = f"{hint}_{i}"
        taken.add(name)
        return name

    # ---- changes -------------------------------------------------------------------------------
    def add_node(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str] | int = 1, *,
                 name: str = "", domain: str = "", attrs: dict[str, Any] | None = None,
                 types: Iterable[TensorType | None] | None = None, doc_string: str = "",
                 metadata: dict[str, str] | None = None) -> Node:
        """Add an operation. `outputs` may be a count, then fresh names derived from `name`/op type are made.
        `attrs` values may be plain Python/numpy values or AttributeProtos."""
        if isinstance(outputs, int):
            stem = name or op_type.lower()
            outputs = [self.unique_name(f"{stem}_out{i}" if outputs > 1 else f"{stem}_out") for i in range(outputs)]
        node = Node(id=next(self._ids), op_type=op_type, domain=domain, name=name, inputs=list(inputs),
                    outputs=list(outputs), doc_string=doc_string, metadata=dict(metadata or {}))
        for key, value in (attrs or {}).items():
            node.attrs[key] = value if isinstance(value, AttributeProto) else helper.make_attribute(key, value)
        node.implicit_inputs = subgraph_outer_names(node)
        self._insert(node)
        for out, t in zip(node.outputs, types or ()):
            if t is not None:
                self.types[out] = t
        return node

    def _insert(self, node: Node) -> None:
        from vidcc.errors import VerifyError

        self.nx.add_node(node.id, op=node)
        self._order[node.id] = next(self._seq)
        self._by_op[node.op_type].add(node.id)
        for slot, out in enumerate(node.outputs):
            if not out:
                continue
            if out in self._producer:
                other = self.node(self._producer[out][0])
                self._remove(node)
                raise VerifyError(f"node {node.label}: output '{out}' is already produced by {other.label} (one producer per tensor)")
            self._producer[out] = (node.id, slot)
            for user, uslot in self._uses.get(out, ()):
                self.nx.add_edge(node.id, user, key=(out, uslot), tensor=out, src_slot=slot, dst_slot=uslot)
        for slot, name in self._input_uses(node):
            self._link(name, node.id, slot)
        if self._node_names is not None and node.name:
            self._node_names.add(node.name)

    def _input_uses(self, node: Node) -> Iterator[tuple[int, str]]:
        for slot, name in enumerate(node.inputs):
            if name:
                yield slot, name
        for name in node.implicit_inputs:
            yield IMPLICIT, name

    def _link(self, tensor: str, node_id: int, slot: int) -> None:
        self._uses[tensor].add((node_id, slot))
        p = self._producer.get(tensor)
        if p is not None:
            self.nx.add_edge(p[0], node_id, key=(tensor, slot), tensor=tensor, src_slot=p[1], dst_slot=slot)

    def _unlink(self, tensor: str, node_id: int, slot: int) -> None:
        uses = self._uses.get(tensor)
        if uses is not None:
            uses.discard((node_id, slot))
            if not uses:
                del self._uses[tensor]
        p = self._producer.get(tensor)
        if p is not None and self.nx.has_edge(p[0], node_id, key=(tensor, slot)):
            self.nx.remove_edge(p[0], node_id, key=(tensor, slot))

    def _remove(self, node: Node) -> None:
        for slot, name in self._input_uses(node):
            self._unlink(name, node.id, slot)
        for out in node.outputs:
            if out and self._producer.get(out, (None,))[0] == node.id:
                del self._producer[out]
        self._by_op[node.op_type].discard(node.id)
        self.nx.remove_node(node.id)
        del self._order[node.id]

    def remove_node(self, node: Node, *, keep_types: bool = False) -> None:
        """Remove an operation; its outputs must no longer be used (see replace_all_uses)."""
        self._remove(node)
        if not keep_types:
            for out in node.outputs:
                if out not in self.outputs:
                    self.types.pop(out, None)

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        for n in list(nodes):
            self.remove_node(n)

    def set_input(self, node: Node, slot: int, tensor: str) -> None:
        old = node.inputs[slot]
        if old:
            self._unlink(old, node.id, slot)
        node.inputs[slot] = tensor
        if tensor:
            self._link(tensor, node.id, slot)

    def set_inputs(self, node: Node, inputs: list[str]) -> None:
        for slot, name in enumerate(node.inputs):
            if name:
                self._unlink(name, node.id, slot)
        node.inputs = list(inputs)
        for slot, name in enumerate(node.inputs):
            if name:
                self._link(name, node.id, slot)

    def set_attr(self, node: Node, key: str, value: Any) -> None:
        if value is None:
            node.attrs.pop(key, None)
        else:
            node.attrs[key] = value if isinstance(value, AttributeProto) else helper.make_attribute(key, value)
        if isinstance(value, AttributeProto) and value.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            self._relink_implicit(node)

    def _relink_implicit(self, node: Node) -> None:
        for name in node.implicit_inputs:
            self._unlink(name, node.id, IMPLICIT)
        node.implicit_inputs = subgraph_outer_names(node)
        for name in node.implicit_inputs:
            self._link(name, node.id, IMPLICIT)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Every reader of `old` (graph outputs included, by renaming the producer's output) reads `new`."""
        for node, slot in self.consumers(old):
            if slot == IMPLICIT:
                rename_in_subgraphs(node, old, new)
                self._relink_implicit(node)
            else:
                self.set_input(node, slot, new)
        if old in self.outputs:
            self._retarget_output(old, new)

    def _retarget_output(self, old: str, new: str) -> None:
        """Keep the graph's output name: make `new`'s value appear under `old`."""
        from vidcc.errors import VerifyError

        p = self.producer_slot(new)
        if p is not None and new not in self.outputs and new not in self.inputs and not self.consumers(new):
            node, slot = p
            old_p = self._producer.get(old)
            if old_p is not None:
                self.rename_output(self.node(old_p[0]), old_p[1], self.unique_name(old + "_dead"))
            t = self.types.pop(new, None)
            self.rename_output(node, slot, old)
            if t is not None and old not in self.types:
                self.types[old] = t
            return
        # `new` is also used elsewhere or is not produced by a node: copy it under the output's name.
        old_p = self._producer.get(old)
        if old_p is not None:
            self.rename_output(self.node(old_p[0]), old_p[1], self.unique_name(old + "_dead"))
        if old in self._producer:
            raise VerifyError(f"cannot retarget graph output '{old}'")
        self.add_node("Identity", [new], [old], name=self.unique_node_name(f"{old}_identity"),
                      types=[self.type_of(new)])

    def rename_output(self, node: Node, slot: int, new: str) -> None:
        """Rename a node output; its consumers follow."""
        old = node.outputs[slot]
        users = list(self._uses.get(old, ()))
        for user, uslot in users:
            self._unlink(old, user, uslot)
        del self._producer[old]
        node.outputs[slot] = new
        self._producer[new] = (node.id, slot)
        if old in self.types:
            self.types[new] = self.types.pop(old)
        for user, uslot in users:
            u = self.node(user)
            if uslot == IMPLICIT:
                rename_in_subgraphs(u, old, new)
                self._relink_implicit(u)
            else:
                u.inputs[uslot] = new
                self._link(new, user, uslot)

    def add_constant(self, array: np.ndarray, hint: str = "const", name: str | None = None) -> str:
        name = name or self.unique_name(hint)
        array = np.array(array, copy=True) if not isinstance(array, np.ndarray) else array
        self.constants[name] = Constant(name, array=array)
        return name

    def set_constant(self, name: str, array: np.ndarray) -> None:
        """Replace the value of an existing (or new) constant."""
        self.constants[name] = Constant(name, array=np.asarray(array))

    def remove_unused_constants(self) -> list[str]:
        dead = [c for c in self.constants if not self.is_used(c)]
        for c in dead:
            del self.constants[c]
        return dead

    # ---- snapshots for rollback ----------------------------------------------------------------
    def snapshot(self) -> "_Snapshot":
        """Cheap copy of the mutable state: node records are copied, tensors and constant arrays are
        shared (arrays are read-only, so a pass cannot change one in place)."""
        nodes = [(n.id, self._order[n.id], _copy_node(n)) for n in (self.node(i) for i in self.nx.nodes)]
        return _Snapshot(nodes, list(self.inputs), list(self.outputs), dict(self.types), dict(self.constants),
                         dict(self.io_meta), dict(self.opsets), self.name, self.doc_string, dict(self.extra))

    def restore(self, snap: "_Snapshot") -> None:
        self.nx = nx.MultiDiGraph()
        self._producer, self._uses, self._by_op = {}, defaultdict(set), defaultdict(set)
        self._order = {}
        self._node_names = None
        self.inputs, self.outputs = list(snap.inputs), list(snap.outputs)
        self.types, self.constants = dict(snap.types), dict(snap.constants)
        self.io_meta, self.opsets = dict(snap.io_meta), dict(snap.opsets)
        self.name, self.doc_string, self.extra = snap.name, snap.doc_string, dict(snap.extra)
        for node_id, order, node in sorted(snap.nodes, key=lambda t: t[1]):
            node = _copy_node(node)
            self.nx.add_node(node.id, op=node)
            self._order[node.id] = order
            self._by_op[node.op_type].add(node.id)
            for slot, out in enumerate(node.outputs):
                if out:
                    self._producer[out] = (node.id, slot)
        for node_id in list(self.nx.nodes):
            node = self.node(node_id)
            for slot, name in self._input_uses(node):
                self._link(name, node.id, slot)
        self._seq = itertools.count(max(self._order.values(), default=-1) + 1)

    def copy(self) -> "Graph":
        g = Graph(self.name)
        g.meta = self.meta
        g._ids = itertools.count(max(self.nx.nodes, default=-1) + 1)
        g.restore(self.snapshot())
        return g

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self)} nodes, {len(self.constants)} constants)"


@dataclass
class _Snapshot:
    nodes: list
    inputs: list
    outputs: list
    types: dict
    constants: dict
    io_meta: dict
    opsets: dict
    name: str
    doc_string: str
    extra: dict


def _copy_node(n: Node) -> Node:
    # AttributeProtos are replaced, never edited in place, by Graph.set_attr: sharing them is safe.
    return Node(n.id, n.op_type, n.domain, n.name, list(n.inputs), list(n.outputs), dict(n.attrs),
                n.doc_string, dict(n.metadata), n.implicit_inputs, n.precision)


def _subgraphs(node: Node) -> Iterator[onnx.GraphProto]:
    for a in node.attrs.values():
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def _outer_names(g: onnx.GraphProto, bound: set[str]) -> set[str]:
    bound = bound | {i.name for i in g.input} | {t.name for t in g.initializer}
    bound |= {t.values.name for t in g.sparse_initializer}
    free: set[str] = set()
    for n in g.node:
        free.update(i for i in n.input if i and i not in bound)
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                free |= _outer_names(sub, bound)
        bound.update(o for o in n.output if o)
    free.update(o.name for o in g.output if o.name not in bound)
    return free


def subgraph_outer_names(node: Node) -> tuple[str, ...]:
    """Names that a node's subgraph attributes read from the enclosing scope."""
    free: set[str] = set()
    for g in _subgraphs(node):
        free |= _outer_names(g, set())
    return tuple(sorted(free))


def rename_in_subgraphs(node: Node, old: str, new: str) -> None:
    """Point outer-scope references to `old` inside a node's subgraphs at `new`."""
    for key, a in list(node.attrs.items()):
        if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            continue
        a2 = AttributeProto()
        a2.CopyFrom(a)
        for g in ([a2.g] if a2.type == AttributeProto.GRAPH else a2.graphs):
            _rename_free(g, old, new, set())
        node.attrs[key] = a2


def _rename_free(g: onnx.GraphProto, old: str, new: str, bound: set[str]) -> None:
    bound = bound | {i.name for i in g.input} | {t.name for t in g.initializer}
    if old in bound:
        return
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                _rename_free(sub, old, new, bound)
        if old in n.output:
            return
    for o in g.output:
        if o.name == old:
            o.name = new

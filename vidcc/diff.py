"""The diff core shared by `vidcc explain` (two IR states around one pass) and `vidcc diff` (two files).

A `State` is a graph's node records (copies from `Graph.snapshot()`, no weights copied) plus indexes.
`compare(a, b, mapping)` reports what changed between two states, given which node of `a` is which node
of `b`: inside one IR the node id is stable (`mapping=None`); across two files `match_nodes` finds the
mapping by node name, then output tensor name, then structure.

A matched node is *rewritten* when its op, attributes, outputs or the *source* of any input changed.
An input's source is what produces it -- (matched producer, output slot), a constant's signature, or a
graph input -- so renamed tensors do not count as changes, a re-wired input does.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import networkx as nx

from vidcc.ir import Constant, Graph, Node, TensorType

SMALL_CONSTANT = 1 << 20  # bytes: constants up to this size are matched by value hash across files
MAX_REGIONS = 40  # changed regions kept per change set (the rest are counted)
MAX_REGION_CHANGED = 40  # changed nodes drawn per region side
MAX_REGION_CONTEXT = 24  # unchanged neighbour nodes drawn per region side

ConstSig = Callable[[str, Constant], Hashable]


def same_object(name: str, c: Constant) -> Hashable:
    """Within one process a pass replaces a Constant object to change it: identity is a cheap, exact test."""
    return id(c)


def value_hash(name: str, c: Constant) -> Hashable:
    """Across files: small constants by value, large ones by dtype, shape and name (hashing GBs is slow)."""
    if c.nbytes > SMALL_CONSTANT:
        return ("large", c.dtype, c.shape, name)
    h = hashlib.blake2b(digest_size=16)
    for piece in c.raw_chunks():
        h.update(piece)
    return ("value", c.dtype, c.shape, h.hexdigest())


def op_label(node: Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


class State:
    """One graph state: node records keyed by node id, in insertion order, with lazy indexes."""

    def __init__(self, graph: Graph, *, const_sig: ConstSig = same_object):
        snap = graph.snapshot()
        ordered = sorted(snap.nodes, key=lambda t: t[1])
        self.nodes: dict[int, Node] = {node_id: node for node_id, _, node in ordered}
        self.inputs = list(snap.inputs)
        self.outputs = list(snap.outputs)
        self.types: dict[str, TensorType] = snap.types
        self.constants: dict[str, Constant] = snap.constants
        self.const_sig = const_sig
        self._input_set = set(self.inputs)
        self._producer: dict[str, tuple[int, int]] | None = None
        self._consumers: dict[str, list[int]] | None = None
        self._const_sigs: dict[str, Hashable] = {}
        self._histogram: Counter | None = None
        self._topo: list[int] | None = None

    # ---- indexes --------------------------------------------------------------------------------
    def _index(self) -> None:
        self._producer, self._consumers = {}, defaultdict(list)
        for key, node in self.nodes.items():
            for slot, out in enumerate(node.outputs):
                if out:
                    self._producer[out] = (key, slot)
            for name in dict.fromkeys(i for i in node.inputs if i):
                self._consumers[name].append(key)

    def producer(self, tensor: str) -> tuple[int, int] | None:
        if self._producer is None:
            self._index()
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[int]:
        if self._consumers is None:
            self._index()
        return self._consumers.get(tensor, [])

    def neighbours(self, key: int) -> list[int]:
        node = self.nodes[key]
        found = [p[0] for p in (self.producer(i) for i in node.inputs if i) if p is not None]
        for out in node.outputs:
            if out:
                found.extend(self.consumers(out))
        return list(dict.fromkeys(k for k in found if k != key))

    def toposort(self) -> list[int]:
        """Producers before consumers, insertion order where free: deterministic."""
        if self._topo is None:
            order = {k: i for i, k in enumerate(self.nodes)}
            g = nx.DiGraph()
            g.add_nodes_from(self.nodes)
            for key, node in self.nodes.items():
                for i in node.inputs:
                    p = self.producer(i) if i else None
                    if p is not None and p[0] != key:
                        g.add_edge(p[0], key)
            try:
                self._topo = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
            except nx.NetworkXUnfeasible:  # a broken file with a cycle: insertion order still diffs
                self._topo = list(self.nodes)
        return self._topo

    # ---- facts ----------------------------------------------------------------------------------
    def type_of(self, tensor: str) -> TensorType:
        c = self.constants.get(tensor)
        return c.type if c is not None else self.types.get(tensor, TensorType())

    def constant_signature(self, tensor: str) -> Hashable:
        sig = self._const_sigs.get(tensor)
        if sig is None:
            sig = self._const_sigs[tensor] = self.const_sig(tensor, self.constants[tensor])
        return sig

    def histogram(self) -> Counter:
        if self._histogram is None:
            self._histogram = Counter(op_label(n) for n in self.nodes.values())
        return self._histogram

    def totals(self) -> dict[str, int]:
        from vidcc.stats import _FLOAT_TYPES

        params = sum(c.size for c in self.constants.values() if c.dtype in _FLOAT_TYPES)
        return {"params": int(params), "weight_bytes": int(sum(c.nbytes for c in self.constants.values())),
                "constants": len(self.constants)}

    def source(self, tensor: str, remap: Callable[[int], int | None] | None = None) -> Hashable:
        """What produces `tensor`, in the other state's terms when `remap` maps this state's keys."""
        if not tensor:
            return ("none",)
        p = self.producer(tensor)
        if p is not None:
            key = remap(p[0]) if remap is not None else p[0]
            return ("node", key, p[1]) if key is not None else ("unmatched", id(self), p[0])
        if tensor in self.constants:
            return ("const", self.constant_signature(tensor))
        if tensor in self._input_set:
            return ("input", tensor)
        return ("free", tensor)  # outer scope of a subgraph, or dangling


# ---- matching across files -------------------------------------------------------------------------

@dataclass
class Matching:
    mapping: dict[int, int] = field(default_factory=dict)  # a key -> b key
    how: Counter = field(default_factory=Counter)  # "name" / "output" / "structure" / "neighbours" -> count

    def add(self, a_key: int, b_key: int, how: str) -> None:
        self.mapping[a_key] = b_key
        self.how[how] += 1


def _attrs_sig(node: Node) -> Hashable:
    return tuple(sorted((k, a.SerializeToString(deterministic=True)) for k, a in node.attrs.items()))


def match_nodes(a: State, b: State) -> Matching:
    """Which node of `a` is which node of `b`: by unique node name, then by output tensor name with the
    same op, then by structure (op, attributes and inputs' sources, anchored on the nodes already matched),
    then by position next to matched nodes."""
    m = Matching()
    a_names = Counter(n.name for n in a.nodes.values() if n.name)
    b_names = Counter(n.name for n in b.nodes.values() if n.name)
    b_by_name = {n.name: k for k, n in b.nodes.items() if n.name and b_names[n.name] == 1}
    for k, n in a.nodes.items():
        if n.name and a_names[n.name] == 1 and n.name in b_by_name:
            m.add(k, b_by_name[n.name], "name")

    taken = set(m.mapping.values())
    for k, n in a.nodes.items():
        if k in m.mapping:
            continue
        for out in n.outputs:
            p = b.producer(out) if out else None
            if p is not None and p[0] not in taken and op_label(b.nodes[p[0]]) == op_label(n):
                m.add(k, p[0], "output")
                taken.add(p[0])
                break

    # Structure: a Merkle hash per node over (op, attrs, input sources), where a matched producer is
    # an anchor shared by both sides. Equal hashes on unmatched nodes pair up in topological order.
    inverse = {bk: ak for ak, bk in m.mapping.items()}
    a_hash = _structural_hashes(a, lambda k: ("anchor", m.mapping[k]) if k in m.mapping else None)
    b_hash = _structural_hashes(b, lambda k: ("anchor", k) if k in inverse else None)
    pool: dict[Hashable, list[int]] = defaultdict(list)
    for k in a.toposort():
        if k not in m.mapping:
            pool[a_hash[k]].append(k)
    for k in b.toposort():
        if k in inverse:
            continue
        candidates = pool.get(b_hash[k])
        if candidates:
            m.add(candidates.pop(0), k, "structure")
    _match_neighbours(a, b, m)
    return m


def _match_neighbours(a: State, b: State, m: Matching) -> None:
    """Last resort for nodes that changed *and* lost their names: next to a matched pair, the producer
    at the same input slot, or the only consumer with the same op at the same slot, is the same node."""
    inverse = {bk: ak for ak, bk in m.mapping.items()}
    queue = deque(m.mapping.items())

    def pair(ak: int, bk: int) -> None:
        if ak not in m.mapping and bk not in inverse and op_label(a.nodes[ak]) == op_label(b.nodes[bk]):
            m.add(ak, bk, "neighbours")
            inverse[bk] = ak
            queue.append((ak, bk))

    while queue:
        ak, bk = queue.popleft()
        na, nb = a.nodes[ak], b.nodes[bk]
        for x, y in zip(na.inputs, nb.inputs):
            pa, pb = (a.producer(x) if x else None), (b.producer(y) if y else None)
            if pa is not None and pb is not None and pa[1] == pb[1]:
                pair(pa[0], pb[0])
        for x, y in zip(na.outputs, nb.outputs):
            if not (x and y):
                continue
            ua = _uses_by_op(a, x, m.mapping)
            ub = _uses_by_op(b, y, inverse)
            for use, keys in ua.items():
                if len(keys) == 1 and len(ub.get(use, ())) == 1:
                    pair(keys[0], ub[use][0])


def _uses_by_op(s: State, tensor: str, matched: dict[int, int]) -> dict[tuple[str, int], list[int]]:
    uses: dict[tuple[str, int], list[int]] = defaultdict(list)
    for k in s.consumers(tensor):
        if k not in matched:
            node = s.nodes[k]
            for slot, name in enumerate(node.inputs):
                if name == tensor:
                    uses[(op_label(node), slot)].append(k)
    return uses


def _structural_hashes(s: State, anchor: Callable[[int], Hashable | None]) -> dict[int, Hashable]:
    out: dict[int, Hashable] = {}
    for k in s.toposort():
        node = s.nodes[k]
        ins = []
        for i in node.inputs:
            p = s.producer(i) if i else None
            if p is None:
                ins.append(s.source(i))
            else:
                ins.append((anchor(p[0]) or out.get(p[0], ("cycle", p[0])), p[1]))
        out[k] = hash((op_label(node), _attrs_sig(node), len(node.outputs), tuple(ins)))
    return out


# ---- comparing two states ----------------------------------------------------------------------

def node_ref(key: int, node: Node) -> dict[str, Any]:
    return {"id": key, "name": node.name or f"<unnamed {node.op_type}#{key}>", "op": op_label(node),
            "precision": node.precision}


def compare(a: State, b: State, mapping: dict[int, int] | None = None, *, same_ir: bool = True,
            shape_hint: dict[str, TensorType] | None = None) -> dict[str, Any]:
    """A change set from `a` to `b` (see docs/explain.md, "ChangeSet"). `mapping` None means node ids
    are shared (one IR before and after a pass); `same_ir` False ignores tensor renames on outputs."""
    if mapping is None:
        mapping = {k: k for k in a.nodes if k in b.nodes}
    inverse = {bk: ak for ak, bk in mapping.items()}
    remap = mapping.get

    removed = [k for k in a.nodes if k not in mapping]
    added = [k for k in b.nodes if k not in inverse]
    rewritten, precision = [], []
    for bk in b.nodes:  # in b's order, so listings follow the graph
        ak = inverse.get(bk)
        if ak is None:
            continue
        na, nb = a.nodes[ak], b.nodes[bk]
        what, attrs = _node_changes(a, na, b, nb, remap, same_ir)
        if what:
            ref = node_ref(bk, nb)
            ref.update(before=node_ref(ak, na), what=what)
            if attrs:
                ref["attrs"] = attrs
            rewritten.append(ref)
        if na.precision != nb.precision:
            precision.append({**node_ref(bk, nb), "from": na.precision, "to": nb.precision})

    hist_a, hist_b = a.histogram(), b.histogram()
    ops_delta = {op: hist_b[op] - hist_a[op] for op in sorted(set(hist_a) | set(hist_b)) if hist_b[op] != hist_a[op]}
    ta, tb = a.totals(), b.totals()
    cost = {k: tb[k] - ta[k] for k in ta}
    rew_a = [r["before"]["id"] for r in rewritten]
    rew_b = [r["id"] for r in rewritten]
    macs, unknown = _macs_delta(a, removed + rew_a, b, added + rew_b, shape_hint)
    cost.update(macs=macs, macs_unknown=unknown)

    regions, omitted = _regions(a, b, set(removed), set(added), list(zip(rew_a, rew_b)), mapping, inverse)
    return {
        "counts": {"added": len(added), "removed": len(removed), "rewritten": len(rewritten),
                   "precision": len(precision), "types": _type_changes(a, b),
                   "nodes_before": len(a.nodes), "nodes_after": len(b.nodes)},
        "added": [node_ref(k, b.nodes[k]) for k in added],
        "removed": [node_ref(k, a.nodes[k]) for k in removed],
        "rewritten": rewritten,
        "precision": precision,
        "ops_delta": ops_delta,
        "cost": cost,
        "regions": regions,
        "regions_omitted": omitted,
    }


def _type_changes(a: State, b: State) -> int:
    """Tensors (of nodes present on both sides) whose known dtype/shape changed, e.g. by shape inference."""
    names = {o for n in b.nodes.values() for o in n.outputs if o} | set(b.outputs)
    return sum(1 for t in names if t in a.types and a.types[t] != b.types.get(t)
               or t not in a.types and t in b.types and a.producer(t) is not None)


def _node_changes(a: State, na: Node, b: State, nb: Node, remap, same_ir: bool) -> tuple[list[str], list[str]]:
    what: list[str] = []
    if op_label(na) != op_label(nb):
        what.append("op")
    if na.name != nb.name:
        what.append("name")
    attrs = sorted(k for k in set(na.attrs) | set(nb.attrs)
                   if not (k in na.attrs and k in nb.attrs and (na.attrs[k] is nb.attrs[k] or na.attrs[k] == nb.attrs[k])))
    if attrs:
        what.append("attrs")
    if len(na.inputs) != len(nb.inputs) or any(
            a.source(x, remap) != b.source(y) for x, y in zip(na.inputs, nb.inputs)):
        what.append("inputs")
    if len(na.outputs) != len(nb.outputs) or (same_ir and na.outputs != nb.outputs):
        what.append("outputs")
    return what, attrs


# Ops whose first output has the shape of their first input. Shape inference knows no contrib op
# (com.microsoft::QuickGelu, ...), so without this one fused activation hides every cost below it.
SHAPE_PRESERVING = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Swish", "HardSwish", "Mish",
    "Softmax", "Cast", "Identity", "Dropout", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization", "GroupNormalization",
    "GroupNorm", "InstanceNormalization", "BatchNormalization", "BiasAdd", "BiasSplitGelu", "MultiHeadAttention",
}


class TypeView:
    """node_macs() asks a graph for tensor types: the state's own when static, else a static shape from
    the hint, else (for a shape-preserving op) its first input's."""

    def __init__(self, state: State, hint: dict[str, TensorType] | None):
        self.state, self.hint = state, hint or {}
        self._memo: dict[str, TensorType] = {}

    def type_of(self, tensor: str, _depth: int = 0) -> TensorType:
        t = self.state.type_of(tensor)
        if _static(t):
            return t
        if tensor in self.hint:
            return self.hint[tensor]
        if tensor in self._memo:
            return self._memo[tensor]
        p = self.state.producer(tensor)
        if p is not None and p[1] == 0 and _depth < 64:
            node = self.state.nodes[p[0]]
            if node.op_type in SHAPE_PRESERVING and node.inputs and node.inputs[0]:
                src = self.type_of(node.inputs[0], _depth + 1)
                if _static(src):
                    t = TensorType(t.dtype or src.dtype, src.shape)
        self._memo[tensor] = t
        return t


def _static(t: TensorType) -> bool:
    return t.shape is not None and all(isinstance(d, int) for d in t.shape)


def _macs_delta(a: State, a_keys: list[int], b: State, b_keys: list[int], hint) -> tuple[int, int]:
    from vidcc.stats import node_macs

    total, unknown = 0, 0
    for state, keys, sign in ((a, a_keys, -1), (b, b_keys, 1)):
        view = TypeView(state, hint)
        for k in keys:
            try:
                m = node_macs(view, state.nodes[k])
            except (IndexError, KeyError, TypeError, ValueError):  # malformed node: cost unknown
                m = None
            if m is None:
                unknown += 1
            else:
                total += sign * m
    return total, unknown


# ---- changed regions (for drawing) ----------------------------------------------------------------

def _regions(a: State, b: State, removed: set[int], added: set[int], rewritten: list[tuple[int, int]],
             mapping: dict[int, int], inverse: dict[int, int]):
    """Connected groups of changed nodes, each with a before and an after side plus unchanged neighbours."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(x, y):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[ry] = rx

    changed_a = removed | {ak for ak, _ in rewritten}
    changed_b = added | {bk for _, bk in rewritten}
    for ak, bk in rewritten:
        union(("a", ak), ("b", bk))
    for side, state, changed in (("a", a, changed_a), ("b", b, changed_b)):
        for k in changed:
            find((side, k))
            for n in state.neighbours(k):
                if n in changed:
                    union((side, k), (side, n))
    # a replacement that takes over a removed node's output name belongs with it
    for k in removed:
        for out in a.nodes[k].outputs:
            p = b.producer(out) if out else None
            if p is not None and p[0] in added:
                union(("a", k), ("b", p[0]))

    groups: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    order = [("a", k) for k in a.nodes if k in changed_a] + [("b", k) for k in b.nodes if k in changed_b]
    for item in order:
        groups[find(item)].append(item)
    regions = []
    for index, members in enumerate(groups.values()):
        if index >= MAX_REGIONS:
            break
        ka = [k for s, k in members if s == "a"]
        kb = [k for s, k in members if s == "b"]
        before = _region_side(a, ka, removed, "removed")
        after = _region_side(b, kb, added, "added")
        # each side also shows the other side's unchanged neighbours, so a removal is drawn in context
        _add_context(b, after, [mapping.get(n["id"]) for n in before["nodes"] if n["status"] == "context"])
        _add_context(a, before, [inverse.get(n["id"]) for n in after["nodes"] if n["status"] == "context"])
        regions.append({"id": index, "before": before, "after": after})
    return regions, max(0, len(groups) - MAX_REGIONS)


def _region_side(state: State, keys: list[int], fresh: set[int], fresh_status: str) -> dict[str, Any]:
    keys = keys[:MAX_REGION_CHANGED]
    shown = {k: (fresh_status if k in fresh else "rewritten") for k in keys}
    omitted_context = 0
    for k in keys:
        for n in state.neighbours(k):
            if n in shown:
                continue
            if sum(1 for s in shown.values() if s == "context") >= MAX_REGION_CONTEXT:
                omitted_context += 1
                continue
            shown[n] = "context"
    side = {"nodes": [{**node_ref(k, state.nodes[k]), "status": s} for k, s in shown.items()],
            "edges": [], "context_omitted": omitted_context}
    _link(state, side)
    return side


def _add_context(state: State, side: dict[str, Any], keys: list[int | None]) -> None:
    have = {n["id"] for n in side["nodes"]}
    extra = [k for k in dict.fromkeys(keys) if k is not None and k not in have and k in state.nodes]
    if extra:
        side["nodes"].extend({**node_ref(k, state.nodes[k]), "status": "context"} for k in extra)
        _link(state, side)


def _link(state: State, side: dict[str, Any]) -> None:
    shown = {n["id"] for n in side["nodes"]}
    edges = []
    for k in shown:
        for i in dict.fromkeys(x for x in state.nodes[k].inputs if x):
            p = state.producer(i)
            if p is not None and p[0] in shown and p[0] != k:
                edges.append([p[0], k, i])
    side["edges"] = sorted(edges, key=lambda e: (e[0], e[1], e[2]))


# ---- two files -----------------------------------------------------------------------------------

def diff_graphs(ga: Graph, gb: Graph, *, a_name: str = "A", b_name: str = "B") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `vidcc.explain/1` diff report of two graphs (kind "diff") and its node table (for the HTML)."""
    from vidcc import __version__, stats
    from vidcc.explain import SCHEMA

    a, b = State(ga, const_sig=value_hash), State(gb, const_sig=value_hash)
    m = match_nodes(a, b)
    changes = compare(a, b, m.mapping, same_ir=False)
    status = {k: "added" for k in b.nodes if k not in set(m.mapping.values())}
    status.update({r["id"]: "rewritten" for r in changes["rewritten"]})
    rows = [{**node_ref(k, n), "status": status.get(k, "unchanged"), "by": []} for k, n in b.nodes.items()]
    rows += [{**r, "status": "removed", "by": []} for r in changes["removed"]]
    sa, sb = stats.summarize(ga), stats.summarize(gb)
    for s in (sa, sb):
        s["macs_at"] = None
    report = {
        "schema": SCHEMA,
        "kind": "diff",
        "vidcc": __version__,
        "a": {"path": a_name, "summary": sa},
        "b": {"path": b_name, "summary": sb},
        "match": {"name": m.how["name"], "output": m.how["output"], "structure": m.how["structure"],
                  "neighbours": m.how["neighbours"],
                  "unmatched_a": len(a.nodes) - len(m.mapping), "unmatched_b": len(b.nodes) - len(m.mapping)},
        "changes": changes,
    }
    return report, rows


def diff_files(path_a: str, path_b: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from vidcc import onnx_io

    return diff_graphs(onnx_io.load(path_a), onnx_io.load(path_b), a_name=str(path_a), b_name=str(path_b))

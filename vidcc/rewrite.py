"""Rewrite patterns: rules as data, a check that says why a match was refused, and a driver.

A pattern is a tree (or DAG: reuse a sub-pattern object to require the same node twice) of `P` nodes
matched backwards from its root through producers. Leaves are `Var` (any tensor, captured by name;
the same name twice must be the same tensor) and `Const` (an initializer, optionally constrained).

    x = Var("x")
    silu = P("Mul", x, P("Sigmoid", x), name="mul", commute=True)
    Rule("SiLU", silu, rewrite=lambda m, g, ctx: [emit(g, m, "Swish", [m["x"]])], anchor="mul")

Matching never scans the graph: candidates are `graph.nodes_by_op(op of the anchor)`. From each
anchor the driver walks down the pattern's path to its root through the anchor's consumers (so an
anchor consumed some other way is simply not a candidate), then matches the root backwards and
requires the anchor pattern to bind to that anchor. Rules sharing a `name` are alternative forms of
one fusion (e.g. the TorchScript and dynamo exports of GroupNorm); the first that matches and passes
its check wins, otherwise the candidate is refused with the reason of the attempt that got furthest.
Stats read `{"GroupNorm": "37/37"}` (fused / candidates); details are explain events.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from vidcc.ir import Graph, Node, TensorType

COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Equal"}

_ids = itertools.count()


class Pattern:
    """Base of pattern nodes."""


@dataclass(eq=False)
class Var(Pattern):
    """Any tensor; captured as `match[name]`."""

    name: str | None = None


@dataclass(eq=False)
class Const(Pattern):
    """A constant tensor (initializer). `value`: scalar every element must equal (within `rtol`);
    `test`: a predicate on the array. Captured as `match[name]`, its array as `match.const(name)`."""

    name: str | None = None
    value: float | None = None
    test: Callable[[np.ndarray], bool] | None = None
    rtol: float = 1e-6


class P(Pattern):
    """An operation. `op` may be a tuple of alternatives. Keyword arguments constrain attributes:
    a plain value must equal the attribute (None: must be absent or default), a callable gets the value.
    `commute` tries both input orders (default for commutative ops); `strict` requires exactly the
    pattern's inputs (else extra trailing inputs, e.g. opset-18 Reduce axes, are allowed); `slot` is
    which output of this node its consumer reads; `shared` lets the node's outputs have readers
    outside the match (the node is then kept)."""

    def __init__(self, op: str | tuple[str, ...], *inputs: Pattern | None, name: str | None = None,
                 domain: str = "", commute: bool | None = None, slot: int = 0, shared: bool = False,
                 strict: bool = False, **attrs: Any):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs = tuple(Var() if i is None else i for i in inputs)
        self.name = name or f"_{self.ops[0]}{next(_ids)}"
        self.domain = domain
        self.commute = (all(o in COMMUTATIVE for o in self.ops) and len(inputs) == 2) if commute is None else commute
        self.slot = slot
        self.shared = shared
        self.strict = strict
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"P({'|'.join(self.ops)}, {self.name})"


class Match:
    """What a pattern bound: nodes by pattern name (`match.node(name)`), tensors by Var/Const name
    (`match[name]`), constant arrays (`match.const(name)`)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: dict[str, Node] = {}
        self.values: dict[str, str] = {}
        self.pattern_nodes: dict[str, P] = {}

    def copy(self) -> "Match":
        m = Match(self.graph)
        m.nodes, m.values, m.pattern_nodes = dict(self.nodes), dict(self.values), dict(self.pattern_nodes)
        return m

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self.nodes

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray:
        return self.graph.constant(self.values[name])

    def type(self, name: str) -> TensorType:
        return self.graph.type_of(self.values[name] if name in self.values else self.nodes[name].outputs[0])

    def shape(self, name: str):
        return self.type(name).shape


class _Fail(Exception):
    def __init__(self, reason: str, depth: int):
        self.reason, self.depth = reason, depth


def _node_text(n: Node) -> str:
    return f"{n.op_type} '{n.name or n.outputs[0]}'"


class Matcher:
    """Backward matching of one pattern; records the deepest failure as a human-readable reason."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def match(self, pattern: P, node: Node) -> Match:
        """Match `pattern` with `node` as its root; raises _Fail(reason, depth) on mismatch."""
        best: list[_Fail] = []
        for m in self._node(pattern, node, Match(self.graph), best, 0):
            return m
        raise max(best, key=lambda f: f.depth) if best else _Fail("no match", 0)

    # Generators yield every consistent extension of a match, so alternatives (commuted inputs,
    # op choices) backtrack naturally.
    def _node(self, p: P, node: Node, m: Match, best: list, depth: int):
        bound = m.nodes.get(p.name)
        if bound is not None:
            if bound is node:
                yield m
            else:
                best.append(_Fail(f"{_node_text(node)} should be the same node as {_node_text(bound)}", depth))
            return
        if node.op_type not in p.ops or node.domain not in (p.domain, "ai.onnx" if p.domain == "" else p.domain):
            best.append(_Fail(f"expected {'|'.join(p.ops)}, found {_node_text(node)}", depth))
            return
        if node in m.nodes.values():
            best.append(_Fail(f"{_node_text(node)} is matched twice", depth))
            return
        for key, want in p.attrs.items():
            have = node.attr(key)
            ok = want(have) if callable(want) else _attr_equal(have, want)
            if not ok:
                best.append(_Fail(f"{_node_text(node)}: attribute {key}={have!r} does not fit", depth))
                return
        ins = [i for i in node.inputs]
        if len(ins) < len(p.inputs) or any(not ins[k] for k in range(len(p.inputs))) or (
                p.strict and any(ins[len(p.inputs):])):
            best.append(_Fail(f"{_node_text(node)} has {len(ins)} inputs, pattern needs {len(p.inputs)}", depth))
            return
        m = m.copy()
        m.nodes[p.name] = node
        m.pattern_nodes[p.name] = p
        orders = [list(range(len(p.inputs)))]
        if p.commute:
            orders.append([1, 0] + list(range(2, len(p.inputs))))
        for order in orders:
            yield from self._inputs(p, [ins[k] for k in order], 0, m, best, depth + 1)

    def _inputs(self, p: P, tensors: list[str], k: int, m: Match, best: list, depth: int):
        if k == len(p.inputs):
            yield m
            return
        for m2 in self._value(p.inputs[k], tensors[k], m, best, depth):
            yield from self._inputs(p, tensors, k + 1, m2, best, depth + 1)

    def _value(self, p: Pattern, tensor: str, m: Match, best: list, depth: int):
        g = self.graph
        if isinstance(p, Var):
            if p.name is None:
                yield m
            elif p.name in m.values:
                if m.values[p.name] == tensor:
                    yield m
                else:
                    best.append(_Fail(f"'{tensor}' should be the same tensor as '{m.values[p.name]}' ({p.name})", depth))
            else:
                m = m.copy()
                m.values[p.name] = tensor
                yield m
            return
        if isinstance(p, Const):
            arr = g.constant(tensor)
            if arr is None:
                best.append(_Fail(f"'{tensor}' ({p.name or 'input'}) is not a constant", depth))
                return
            if p.value is not None and not (arr.size and np.allclose(arr, p.value, rtol=p.rtol, atol=0)):
                best.append(_Fail(f"constant '{tensor}' is not {p.value}", depth))
                return
            if p.test is not None and not p.test(arr):
                best.append(_Fail(f"constant '{tensor}' ({p.name}) does not fit", depth))
                return
            if p.name is not None:
                if p.name in m.values and m.values[p.name] != tensor:
                    best.append(_Fail(f"'{tensor}' should be the same constant as '{m.values[p.name]}'", depth))
                    return
                m = m.copy()
                m.values[p.name] = tensor
            yield m
            return
        assert isinstance(p, P)
        prod = g.producer_slot(tensor)
        if prod is None:
            best.append(_Fail(f"'{tensor}' is not produced by {'|'.join(p.ops)}", depth))
            return
        node, slot = prod
        if slot != p.slot:
            best.append(_Fail(f"'{tensor}' is output {slot} of {_node_text(node)}, pattern wants {p.slot}", depth))
            return
        yield from self._node(p, node, m, best, depth)


def _attr_equal(have, want) -> bool:
    if isinstance(want, (list, tuple)):
        return have is not None and list(have) == list(want)
    if isinstance(want, float) and have is not None:
        return abs(have - want) <= 1e-6 * max(1.0, abs(want))
    return have == want


def _paths(p: P, target: str) -> list[tuple[P, int]] | None:
    """Path root -> target as (pattern node, input index into which the next one feeds)."""
    if p.name == target:
        return []
    for k, child in enumerate(p.inputs):
        if isinstance(child, P):
            rest = _paths(child, target)
            if rest is not None:
                return [(p, k)] + rest
    return None


def _find(p: Pattern, name: str) -> P | None:
    if isinstance(p, P):
        if p.name == name:
            return p
        for c in p.inputs:
            found = _find(c, name)
            if found is not None:
                return found
    return None


Check = Callable[[Match, Graph, Any], "str | None"]
Rewrite = Callable[[Match, Graph, Any], "list[str] | None"]


@dataclass(frozen=True)
class Rule:
    """One form of a fusion. `check` returns why the match may not be rewritten (or None);
    `rewrite` adds the replacement and returns the tensors that replace the root's outputs (in
    order). Matched nodes whose outputs become unused are removed by the driver."""

    name: str
    pattern: P
    rewrite: Rewrite
    check: Check | None = None
    anchor: str | None = None  # pattern node name whose op types pick the candidates; default: root
    form: str = ""  # which export form this is, for explain ("legacy", "dynamo", ...)

    def anchor_pattern(self) -> P:
        if self.anchor is None:
            return self.pattern
        found = _find(self.pattern, self.anchor)
        if found is None:
            raise ValueError(f"rule {self.name}: anchor '{self.anchor}' is not in the pattern")
        return found


def _roots_from(graph: Graph, rule: Rule, anchor: Node) -> tuple[list[Node], str | None]:
    """Walk from an anchor node down the pattern's path to candidate root nodes."""
    ap = rule.anchor_pattern()
    path = _paths(rule.pattern, ap.name)
    frontier = [anchor]
    for parent, k in reversed(path):
        child = parent.inputs[k]
        nxt = []
        for node in frontier:
            out = node.outputs[child.slot] if child.slot < len(node.outputs) else ""
            for user, slot in graph.consumers(out):
                if user.op_type in parent.ops and (slot == k or (parent.commute and slot in (0, 1) and k in (0, 1))):
                    nxt.append(user)
        if not nxt:
            return [], f"{_node_text(frontier[0])} is not consumed by {'|'.join(parent.ops)}"
        frontier = list(dict.fromkeys(nxt))
    return frontier, None


SHAPE_READERS = frozenset({"Shape", "Size"})


def _escapes(graph: Graph, m: Match, root: Node) -> str | None:
    inside = {n.id for n in m.nodes.values()}
    for name, node in m.nodes.items():
        if node is root or m.pattern_nodes[name].shared:
            continue
        for out in node.outputs:
            if out in graph.outputs:
                return f"{_node_text(node)} output '{out}' is a graph output"
            for user, _ in graph.consumers(out):
                # a Shape/Size reader needs no value: the node stays for it (removed later if dead)
                if user.id not in inside and user.op_type not in SHAPE_READERS:
                    return f"{_node_text(node)} output '{out}' is also used by {_node_text(user)} outside the pattern"
    return None


@dataclass(frozen=True)
class Keep:
    """Returned by a rewrite that matched but leaves the graph as it is (already the best form for
    the target); counted as done, reported as "kept" with the reason."""

    reason: str


@dataclass
class Outcome:
    fused: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(self.fused.values())

    def stats(self) -> dict[str, Any]:
        """{"GroupNorm": "37/37"}: done (fused or kept) / candidates; "GroupNorm kept": n if any."""
        out: dict[str, Any] = {}
        for k, n in self.candidates.items():
            out[k] = f"{self.fused.get(k, 0) + self.kept.get(k, 0)}/{n}"
            if self.kept.get(k):
                out[f"{k} kept"] = self.kept[k]
        return out

    def result(self):
        from vidcc.pass_manager import PassResult

        return PassResult(self.modified, self.stats(), self.details)


def try_rule_group(graph: Graph, rules: list[Rule], anchor: Node, ctx) -> tuple[str, Any]:
    """Try the alternative forms on one anchor. Returns ("fused", (rule, match, new_outputs)),
    ("refused", reason) or ("none", None) when no form even reaches a root from this anchor."""
    matcher = Matcher(graph)
    best: tuple[int, str] | None = None
    for rule in rules:
        if anchor.op_type not in rule.anchor_pattern().ops:
            continue
        roots, why = _roots_from(graph, rule, anchor)
        if not roots:
            continue
        ap = rule.anchor_pattern().name
        for root in roots:
            try:
                m = matcher.match(rule.pattern, root)
            except _Fail as f:
                cand = (f.depth, f"{rule.form + ': ' if rule.form else ''}{f.reason}")
                best = cand if best is None or cand[0] > best[0] else best
                continue
            if m.nodes.get(ap) is not anchor:
                continue
            reason = _escapes(graph, m, root) or (rule.check(m, graph, ctx) if rule.check else None)
            if reason:
                cand = (10_000, f"{rule.form + ': ' if rule.form else ''}{reason}")
                best = cand if best is None or cand[0] > best[0] else best
                continue
            return "fused", (rule, m, root)
    if best is None:
        return "none", None
    return "refused", best[1]


def apply_rules(graph: Graph, rules: Iterable[Rule], ctx, outcome: Outcome | None = None) -> Outcome:
    """Apply rule groups (rules with one name are one group) to every candidate anchor."""
    outcome = outcome or Outcome()
    groups: dict[str, list[Rule]] = {}
    for r in rules:
        groups.setdefault(r.name, []).append(r)
    for name, group in groups.items():
        anchor_ops = list(dict.fromkeys(op for r in group for op in r.anchor_pattern().ops))
        anchors = [n for op in anchor_ops for n in graph.nodes_by_op(op)]
        for anchor in anchors:
            if anchor.id not in graph.nx:
                continue  # consumed by an earlier rewrite
            kind, info = try_rule_group(graph, group, anchor, ctx)
            if kind == "none":
                continue
            outcome.candidates[name] = outcome.candidates.get(name, 0) + 1
            if kind == "refused":
                outcome.details.append({"kind": "refused", "pattern": name, "node": anchor.name or anchor.outputs[0],
                                        "reason": info})
                continue
            rule, m, root = info
            new_outputs = rule.rewrite(m, graph, ctx)
            if isinstance(new_outputs, Keep):
                outcome.kept[name] = outcome.kept.get(name, 0) + 1
                outcome.details.append({"kind": "kept", "pattern": name, "node": anchor.name or anchor.outputs[0],
                                        "reason": new_outputs.reason})
                continue
            if new_outputs is None:  # the rewrite itself declined (it should have said so in check)
                outcome.details.append({"kind": "refused", "pattern": name, "node": anchor.name or anchor.outputs[0],
                                        "reason": "rewrite declined"})
                continue
            replace_root(graph, m, root, new_outputs)
            outcome.fused[name] = outcome.fused.get(name, 0) + 1
            event = {"kind": "fused", "pattern": name, "node": anchor.name or anchor.outputs[0],
                     "nodes": len(m.nodes)}
            if rule.form:
                event["form"] = rule.form
            outcome.details.append(event)
    return outcome


def replace_root(graph: Graph, m: Match, root: Node, new_outputs: list[str]) -> None:
    """Point the root's readers at the new tensors, then remove matched nodes that became dead."""
    for old, new in zip(root.outputs, new_outputs):
        if not old or new is None or old == new:
            continue
        if new not in graph.types or not graph.types[new].dtype:
            t = graph.type_of(old)
            if t.dtype:
                graph.types[new] = t
        graph.replace_all_uses(old, new)
    remove_dead(graph, m.nodes.values())


def remove_dead(graph: Graph, nodes: Iterable[Node]) -> int:
    """Remove the given nodes whose outputs are unused, repeatedly (consumers before producers)."""
    pending = [n for n in nodes if n.id in graph.nx]
    removed = 0
    changed = True
    while changed:
        changed = False
        for n in list(pending):
            if n.id in graph.nx and not any(graph.is_used(o) for o in n.outputs if o):
                graph.remove_node(n)
                pending.remove(n)
                removed += 1
                changed = True
    return removed


def emit(graph: Graph, op: str, inputs: list[str], *, like: Node | None = None, suffix: str = "",
         domain: str = "", attrs: dict | None = None, outputs: int | list[str] = 1,
         types: list[TensorType | None] | None = None) -> Node:
    """Add a replacement node named after `like` (the matched node it stands for)."""
    stem = (like.name or like.outputs[0]) if like is not None else op
    name = graph.unique_node_name(f"{stem}/{suffix or op}")
    if isinstance(outputs, int):
        outputs = [graph.unique_name(f"{name}_out{i}" if outputs > 1 else f"{name}_out") for i in range(outputs)]
    return graph.add_node(op, inputs, outputs, name=name, domain=domain, attrs=attrs, types=types)


def ensure_opset(graph: Graph, domain: str, version: int) -> str | None:
    """Make `domain` imported at >= version. Contrib domains are just added; the default domain is
    raised only when every op in the graph stays valid (see vidcc.opsets). Returns a refusal reason."""
    from vidcc import opsets

    return opsets.require(graph, domain, version)

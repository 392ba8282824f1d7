"""Mixture-of-experts router precompute and expert specialization.

When a router's decision depends only on inputs bound at compile time (the timestep, through
`--bind timestep=...` or `--schedule wan22-t2v`) and constants, it is evaluated per bound value, the
bound values are grouped by the decisions they take ("routes"), and each route gets a graph in which
the router and the experts it does not pick are gone, with their weights:

- If(cond): replaced by the taken branch, inlined (Wan2.2's `t >= boundary*1000` switch);
- Where(cond, a, b): replaced by the picked input when cond is the same for every element;
- TopK / ArgMax / ArgMin: indices become constants (TopK values become a GatherElements of the
  scores at those indices, so gate weights stay computed at run time); the experts the indices never
  name drop out downstream, e.g. through the next case;
- Gather / GatherElements with decided indices into a Concat (a stack of expert outputs): the Concat
  keeps only the inputs the indices name, the indices are renumbered.
Then dead code (the router cone, unpicked experts, their constants) is removed.

Decisions are evaluated at the sample input shapes (or with symbolic dims taken as 1); a binding
means every element of the bound input equals the value. Routers reading activations (token-level
MoE) are left unchanged and explain says why ("router depends on hidden_states").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from vidcc.errors import VidccError
from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.passes._dispatch import prune_empty_dispatch
from vidcc.passes._inline import inline_branch
from vidcc.passes._routers import (GATHERS, INDEX_ROUTERS, Router, _concat_source, bound_feed, evaluate,
                                   find_routers)
from vidcc.passes.dce import DeadCodeElimination

MAX_ROUNDS = 16  # inlining a branch can expose nested routers; each round handles one nesting level


@dataclass
class Route:
    """One distinct set of routing decisions and the bound values (by position) that take it."""

    positions: list[int]
    decisions: dict[str, str]  # router name -> readable decision
    key: tuple = field(repr=False, default=())

    @property
    def label(self) -> str:
        return "; ".join(f"{r}: {d}" for r, d in self.decisions.items()) or "no router"


@dataclass
class Plan:
    bindings: dict[str, list]  # input -> values, all of one length
    routers: list[str]
    refused: list[dict]
    routes: list[Route]

    def binding(self, position: int) -> dict[str, Any]:
        return {k: v[position] for k, v in self.bindings.items()}

    def route_of(self, position: int) -> int:
        return next(i for i, r in enumerate(self.routes) if position in r.positions)


def normalize_bindings(graph: Graph, bindings: dict[str, list]) -> dict[str, list]:
    """Keep the bindings of this graph's inputs; single values broadcast to the longest list."""
    bound = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in bindings.items() if k in graph.inputs}
    if not bound:
        return {}
    n = max(len(v) for v in bound.values())
    for k, v in bound.items():
        if len(v) not in (1, n):
            raise VidccError(f"bindings: '{k}' has {len(v)} values, others {n}; give 1 or {n}")
        bound[k] = v * n if len(v) == 1 else v
    return bound


def describe(graph: Graph, router: Router, value: np.ndarray) -> str:
    node = router.node
    if node.op_type == "If":
        return "then branch" if bool(np.asarray(value).reshape(-1)[0]) else "else branch"
    if node.op_type == "Where":
        v = np.asarray(value, dtype=bool)
        if v.all():
            return f"input 1 ({node.inputs[1]})"
        if not v.any():
            return f"input 2 ({node.inputs[2]})"
        return "mixed (differs across elements)"
    picked = list(dict.fromkeys(np.asarray(value).reshape(-1).tolist()))  # in the order taken: it matters
    if node.op_type in GATHERS:
        return f"gather {picked}"
    return f"experts {picked}"


def _feeds(graph: Graph, bindings: dict[str, list], shapes: dict[str, tuple] | None) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(bindings.values())))
    shapes = shapes or {}
    return [{k: bound_feed(graph, k, v[i], shapes.get(k)) for k, v in bindings.items()} for i in range(n)]


def plan(graph: Graph, bindings: dict[str, list], shapes: dict[str, tuple] | None = None) -> Plan:
    """Evaluate every precomputable router for every bound value and group the values by route."""
    bindings = normalize_bindings(graph, bindings)
    if not bindings:
        return Plan({}, [], [], [])
    routers, refused = find_routers(graph, set(bindings))
    n = len(next(iter(bindings.values())))
    values = evaluate(graph, [r.tensor for r in routers], _feeds(graph, bindings, shapes)) if routers else [{}] * n
    routes: dict[tuple, Route] = {}
    for i, vals in enumerate(values):
        key = tuple((r.tensor, vals[r.tensor].dtype.str, vals[r.tensor].shape, vals[r.tensor].tobytes()) for r in routers)
        if key not in routes:
            routes[key] = Route([], {r.name: describe(graph, r, vals[r.tensor]) for r in routers}, key)
        routes[key].positions.append(i)
    return Plan(bindings, [r.name for r in routers], refused, list(routes.values()))


# ---- applying decisions --------------------------------------------------------------------------
def _same_shape(a: TensorType, b: TensorType) -> bool:
    return a.shape is not None and b.shape is not None and tuple(a.shape) == tuple(b.shape) and None not in a.shape


def _apply(graph: Graph, router: Router, value: np.ndarray) -> str | None:
    """Rewrite one router under its decided value. Returns a refusal reason, or None when done."""
    node = router.node
    op = node.op_type
    if op == "If":
        branch = node.attr("then_branch") if bool(np.asarray(value).reshape(-1)[0]) else node.attr("else_branch")
        inline_branch(graph, node, branch)
        return None
    if op == "Where":
        v = np.asarray(value, dtype=bool)
        if v.any() and not v.all():
            return "decision differs across elements; both inputs kept"
        chosen, other = (node.inputs[1], node.inputs[2]) if v.all() else (node.inputs[2], node.inputs[1])
        out = node.outputs[0]
        ct, ot, yt = graph.type_of(chosen), graph.type_of(other), graph.type_of(out)
        # the picked input must already have the output's shape (Where broadcasts its three inputs)
        if not (_same_shape(ct, yt) or (v.ndim <= len(ct.shape or ()) and _same_shape(ct, ot)
                                        and all(d == 1 for d in v.shape))):
            return "cannot prove the picked input has the output's shape"
        graph.remove_node(node, keep_types=True)
        graph.replace_all_uses(out, chosen)
        return None
    if op in INDEX_ROUTERS:
        idx_out = node.outputs[-1] if op == "TopK" else node.outputs[0]
        const = graph.add_constant(np.ascontiguousarray(value).astype(np.int64), hint=f"{router.name}_indices")
        if op == "TopK" and node.outputs[0] and graph.is_used(node.outputs[0]):
            axis = node.attr("axis", -1)
            vals = node.outputs[0]
            graph.remove_node(node, keep_types=True)
            graph.add_node("GatherElements", [node.inputs[0], const], [vals], attrs={"axis": axis},
                           name=graph.unique_node_name(f"{router.name}/gate_values"), types=[graph.type_of(vals)])
        else:
            graph.remove_node(node, keep_types=True)
        graph.replace_all_uses(idx_out, const)
        return None
    if op in GATHERS:
        return _prune_concat(graph, router, np.asarray(value))
    return f"no rewrite for {op}"


def _prune_concat(graph: Graph, router: Router, idx: np.ndarray) -> str | None:
    node = router.node
    axis = node.attr("axis", 0)
    concat = _concat_source(graph, node.inputs[0], axis)
    sizes = [(graph.type_of(i).shape or [None])[axis] if graph.type_of(i).shape else None for i in concat.inputs]
    if any(not isinstance(s, int) for s in sizes):
        return "sizes of the concatenated experts are not known"
    starts = np.cumsum([0] + sizes)
    total = int(starts[-1])
    flat = np.where(idx < 0, idx + total, idx)
    part = np.searchsorted(starts, flat, side="right") - 1
    keep = sorted(set(part.reshape(-1).tolist()))
    if len(keep) == len(concat.inputs):
        return "every expert is picked"
    new_starts = {k: s for k, s in zip(keep, np.cumsum([0] + [sizes[k] for k in keep]))}
    remapped = flat - starts[part] + np.vectorize(new_starts.get)(part)
    if len(keep) == 1:  # a stack of one: the expert's output itself
        cat_out = concat.inputs[keep[0]]
    else:
        cat_out = graph.unique_name(f"{concat.outputs[0]}_picked")
        graph.add_node("Concat", [concat.inputs[k] for k in keep], [cat_out], attrs={"axis": concat.attr("axis")},
                       name=graph.unique_node_name(f"{concat.name or 'concat'}/picked"))
    graph.set_input(node, 0, cat_out)
    graph.set_input(node, 1, graph.add_constant(remapped.astype(idx.dtype), hint=f"{router.name}_indices"))
    return None


def specialize_inplace(graph: Graph, bindings: dict[str, list], shapes: dict[str, tuple] | None = None) -> list[dict]:
    """Apply every routing decision that all bound values share (input -> list of values), repeatedly:
    an inlined branch may hold further routers. Routers on which the values differ stay (see
    specializations()). Returns explain events, one "routed" event per router and bound value."""
    bindings = normalize_bindings(graph, bindings)
    events: list[dict] = []
    if not bindings:
        return events
    n = len(next(iter(bindings.values())))
    shown = [bindings_value(bindings, i) for i in range(n)]
    skip: set[int] = set()  # routers refused or split by value
    for _ in range(MAX_ROUNDS):
        routers, refused = find_routers(graph, set(bindings))
        routers = [r for r in routers if r.node.id not in skip]
        if not routers:
            events += [e for e in refused if e not in events]
            break
        values = evaluate(graph, [r.tensor for r in routers], _feeds(graph, bindings, shapes))
        for r in routers:
            if r.node.id not in graph.nx:  # it sat in a branch removed earlier in this round
                continue
            first = values[0][r.tensor]
            if any(not np.array_equal(v[r.tensor], first) or v[r.tensor].shape != first.shape for v in values[1:]):
                skip.add(r.node.id)
                continue
            decision = describe(graph, r, first)
            reason = _apply(graph, r, first)
            if reason is None:
                events += [{"kind": "routed", "router": r.name, "op": r.node.op_type, "value": v,
                            "decision": decision} for v in shown]
            else:
                skip.add(r.node.id)
                events.append({"kind": "refused", "node": r.name, "op": r.node.op_type, "reason": reason})
        pruned = prune_empty_dispatch(graph)
        if pruned:
            events.append({"kind": "removed", "what": "dispatch to experts the decided indices never name",
                           "rewrites": pruned})
        DeadCodeElimination().run(graph, None)
    from vidcc.onnx_io import infer_missing_types

    infer_missing_types(graph)
    return events


def bindings_value(bindings: dict[str, list], i: int):
    """How explain shows bound value i: the bare value for one bound input, else a dict."""
    if len(bindings) == 1:
        return next(iter(bindings.values()))[i]
    return {k: v[i] for k, v in bindings.items()}


def specialize(graph: Graph, binding: dict[str, Any], shapes: dict[str, tuple] | None = None) -> Graph:
    """A copy of the graph specialized for one binding, e.g. {"timestep": 999}."""
    g = graph.copy()
    specialize_inplace(g, {k: [v] for k, v in binding.items()}, shapes)
    return g


@dataclass
class Specialization:
    route: Route
    graph: Graph
    events: list[dict]


def specializations(graph: Graph, bindings: dict[str, list], shapes: dict[str, tuple] | None = None,
                    _depth: int = 0) -> list[Specialization]:
    """One specialized graph per distinct route of the bound values (positions index the value lists).
    Decisions shared by all values are applied first; the values are then split by the first router on
    which they differ, and each part specialized further (nested routers)."""
    bindings = normalize_bindings(graph, bindings)
    if not bindings:
        return [Specialization(Route([0], {}), graph.copy(), [])]
    g = graph.copy()
    events = specialize_inplace(g, bindings, shapes)
    decided = {e["router"]: e["decision"] for e in events if e["kind"] == "routed"}
    p = plan(g, bindings, shapes)
    if len(p.routes) <= 1 or _depth >= MAX_ROUNDS:
        return [Specialization(Route(list(range(len(next(iter(bindings.values()))))), decided), g, events)]
    out = []
    for route in p.routes:
        part = {k: [v[i] for i in route.positions] for k, v in bindings.items()}
        for s in specializations(g, part, shapes, _depth + 1):
            positions = [route.positions[i] for i in s.route.positions]
            out.append(Specialization(Route(positions, {**decided, **s.route.decisions}), s.graph,
                                      _remap_values(events, positions, bindings) + s.events))
    return sorted(out, key=lambda s: s.route.positions[0])


def _remap_values(events: list[dict], positions: list[int], bindings: dict[str, list]) -> list[dict]:
    """Shared-decision events restricted to the values of one part."""
    keep = [bindings_value(bindings, i) for i in positions]
    return [e for e in events if e["kind"] != "routed" or e["value"] in keep]


def weight_bytes(graph: Graph) -> int:
    """Bytes of all constants, those held inside If/Loop branches included."""
    total = sum(c.nbytes for c in graph.constants.values())
    for node in graph.nodes:
        if node.has_subgraphs():
            for a in node.attrs.values():
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    total += _subgraph_bytes(sub)
    return total


def _subgraph_bytes(g: onnx.GraphProto) -> int:
    total = 0
    for t in g.initializer:
        info = {e.key: e.value for e in t.external_data}
        total += int(info["length"]) if "length" in info else len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                total += _subgraph_bytes(sub)
    return total


@dataclass(frozen=True)
class PrecomputeRouters(Pass):
    """Precompute MoE routers whose decisions depend only on bound inputs, and drop unpicked experts.

    Rewrite cases (under ctx.bindings, e.g. timestep values):
    - If on a condition of bound inputs: the taken branch is inlined, the other one removed;
    - Where picking between expert outputs by a condition of bound inputs: replaced by the picked input;
    - TopK/ArgMax gates reading only bound inputs (a timestep-embedding router): indices folded to
      constants, TopK values become GatherElements at those indices;
    - Gather of a stack (Concat) of expert outputs at decided indices: unpicked experts leave the stack;
    - routers reading activations are left unchanged: "router depends on hidden_states".
    With several bound values taking one route, the graph is specialized in place; when they take
    several routes, the graph is left unchanged (compile builds one engine per route).
    """

    name = "precompute-routers"

    # what `vidcc compile` uses to build one engine per route (vidcc/specialize.py)
    specializations = staticmethod(lambda graph, bindings, shapes=None: specializations(graph, bindings, shapes))
    weight_bytes = staticmethod(lambda graph: weight_bytes(graph))

    @staticmethod
    def has_routers(graph: Graph, bindings: dict[str, list]) -> bool:
        """Whether some router depends on the bound inputs (and on nothing unbound)."""
        bound = set(normalize_bindings(graph, bindings))
        return bool(bound) and bool(find_routers(graph, bound)[0])

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        bindings = normalize_bindings(graph, ctx.bindings if ctx else {})
        if not bindings:
            routers, refused = find_routers(graph, set())
            return PassResult(False, {"routers": 0}, refused + [
                {"kind": "refused", "node": r.name, "op": r.node.op_type, "reason": "no bindings (see --bind/--schedule)"}
                for r in routers])
        shapes = sample_shapes(ctx)
        before = len(graph), weight_bytes(graph)
        events = specialize_inplace(graph, bindings, shapes)
        routed = [e for e in events if e["kind"] == "routed"]
        p = plan(graph, bindings, shapes)  # what the values still disagree on
        if len(p.routes) > 1:
            events.append({"kind": "refused", "node": ",".join(p.routers), "reason":
                           f"bound values take {len(p.routes)} routes; compile builds one engine per route"})
        stats = {"routed": len({e["router"] for e in routed}), "refused": sum(e["kind"] == "refused" for e in events),
                 "routes": len(p.routes), "nodes_removed": before[0] - len(graph),
                 "weight_bytes_before": before[1], "weight_bytes_after": weight_bytes(graph)}
        return PassResult(bool(routed), stats, events)


def sample_shapes(ctx: PassContext | None) -> dict[str, tuple] | None:
    """Input shapes to evaluate routers at: the calibration/sample feeds' when there are any."""
    if ctx is None or not ctx.calibration:
        return None
    return {k: tuple(np.shape(v)) for k, v in ctx.calibration[0].items()}


PASSES = [PrecomputeRouters]

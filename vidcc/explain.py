"""What each pass did: a recording instrument and the `vidcc.explain/1` report (docs/explain.md).

`ExplainRecorder` keeps one `State` (node records, no weights) per pass boundary -- the state after a
pass is the state before the next -- and diffs consecutive states with the shared diff core. The pass
log (`PassContext.log`) supplies name, plugin, stats, details and timing; `report()` merges both.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidcc import __version__
from vidcc.diff import State, TypeView, compare, node_ref
from vidcc.events import kind_of
from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Instrument, PassContext

SCHEMA = "vidcc.explain/1"


class ExplainRecorder(Instrument):
    """Records the diff of every pass. `shape_hint` gives static shapes (from sample inputs) for MACs."""

    def __init__(self, shape_hint: dict[str, TensorType] | None = None):
        self.shape_hint = shape_hint
        self.entries: list[dict[str, Any]] = []
        self.history: dict[int, list[tuple[str, str]]] = {}  # node id -> [(status, pass name)]
        self.removed_nodes: dict[int, dict[str, Any]] = {}
        self.initial: State | None = None
        self._current: State | None = None
        self._graph: Graph | None = None
        self._log_index = 0

    def _state(self, graph: Graph) -> State:
        # Reuse the state recorded after the previous pass: nothing may change the graph between passes
        # (hooks only observe, a failed pass is rolled back). The node count is a cheap sanity check.
        if self._current is None or self._graph is not graph or len(self._current.nodes) != len(graph):
            self._current, self._graph = State(graph), graph
        if self.initial is None:
            self.initial = self._current
        return self._current

    def before_pass(self, pass_, graph, ctx):
        self._before = self._state(graph)
        self._log_index = len(ctx.log)

    def after_pass(self, pass_, graph, ctx, result, seconds):
        after = State(graph)
        changes = compare(self._before, after, shape_hint=self.shape_hint)
        self._note_history(pass_.name, changes)
        self.entries.append({"log_index": self._log_index, "changes": changes})
        self._current, self._graph = after, graph

    def pass_failed(self, pass_, graph, ctx, error):
        self.entries.append({"log_index": self._log_index, "changes": None})

    def _note_history(self, name: str, changes: dict[str, Any]) -> None:
        for ref in changes["added"]:
            self.history.setdefault(ref["id"], []).append(("added", name))
        for ref in changes["rewritten"]:
            self.history.setdefault(ref["id"], []).append(("rewritten", name))
        for ref in changes["precision"]:
            self.history.setdefault(ref["id"], []).append(("precision", name))
        for ref in changes["removed"]:
            self.removed_nodes[ref["id"]] = {**ref, "status": "removed", "by": [name]}

    def pass_reports(self, ctx: PassContext) -> list[dict[str, Any]]:
        """One entry per pass that ran, in order (see docs/explain.md, "Pass")."""
        out = []
        for index, entry in enumerate(self.entries):
            rec = ctx.log[entry["log_index"]] if entry["log_index"] < len(ctx.log) else None
            details = [jsonable(d) for d in (rec.details if rec else [])]
            out.append({
                "index": index,
                "name": rec.name if rec else "?",
                "spec": rec.spec if rec else "?",
                "plugin": rec.plugin if rec else "?",
                "modified": bool(rec.modified) if rec else False,
                "lossy": bool(rec.lossy) if rec else False,
                "seconds": float(rec.seconds) if rec else 0.0,
                "error": rec.error if rec else None,
                "stats": jsonable(rec.stats) if rec else {},
                "details": details,
                "events": dict(sorted(Counter(kind_of(d) for d in details).items())),
                "changes": entry["changes"],
            })
        return out

    def node_table(self, final: State) -> list[dict[str, Any]]:
        """Every node of the final graph with what happened to it, then the removed ones (for the HTML)."""
        rows = []
        for key, node in final.nodes.items():
            events = self.history.get(key, [])
            status = "added" if any(s == "added" for s, _ in events) else \
                "rewritten" if any(s in ("rewritten", "precision") for s, _ in events) else "unchanged"
            rows.append({**node_ref(key, node), "status": status, "by": [p for _, p in events]})
        rows.extend(r for k, r in self.removed_nodes.items() if k not in final.nodes)
        return rows


@dataclass
class Explanation:
    report: dict[str, Any]
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the node table for the HTML page


def explain(graph: Graph, passes: list, ctx: PassContext, *, model: str = "", path: str = "",
            pipeline: str = "", feeds: dict[str, np.ndarray] | None = None) -> Explanation:
    """Run `passes` on `graph` with a recorder and build the report. A failing pass (PassError) ends the
    pipeline like `vidcc opt` does; the report then carries the error and the passes before it."""
    from vidcc.errors import PassError
    from vidcc.pass_manager import run_pipeline

    before, hint = _summary(graph, feeds)
    recorder = ExplainRecorder(shape_hint=hint)
    ctx.instruments = [*ctx.instruments, recorder]
    error = None
    try:
        run_pipeline(graph, passes, ctx)
    except PassError as exc:
        error = str(exc)
    after, _ = _summary(graph, feeds, hint)
    final = State(graph)
    initial = recorder.initial or final
    passes_json = recorder.pass_reports(ctx)
    net = compare(initial, final, shape_hint=hint)["counts"] if recorder.initial is not None else \
        {"added": 0, "removed": 0, "rewritten": 0, "precision": 0}
    target = ctx.target.name if ctx.target is not None else None
    report = {
        "schema": SCHEMA,
        "kind": "explain",
        "vidcc": __version__,
        "model": model,
        "path": path,
        "target": target,
        "pipeline": pipeline,
        "before": before,
        "after": after,
        "summary": _pipeline_summary(passes_json, before, after, net),
        "passes": passes_json,
        "error": error,
    }
    return Explanation(report, recorder.node_table(final))


def _summary(graph: Graph, feeds, hint: dict[str, TensorType] | None = None
             ) -> tuple[dict[str, Any], dict[str, TensorType] | None]:
    """stats.summarize, with MACs counted at the sample inputs' shapes when there are sample inputs.
    Shape inference knows no contrib op (com.microsoft::MultiHeadAttention): past one, shapes come from
    `hint` (the first graph's, by tensor name), so a fusion does not make MACs look like they vanished."""
    from vidcc import stats

    info = stats.summarize(graph)
    info["macs_at"] = None
    found = None
    if feeds:
        try:
            bound = stats.bind_input_shapes(graph, feeds)
        except Exception:  # shape inference may fail on a custom op: fall back to the graph's own types
            bound = None
        if bound is not None:
            found = {k: t for k, t in bound.types.items()
                     if t.shape is not None and all(isinstance(d, int) for d in t.shape)}
            macs, unknown = graph_macs(bound, {**(hint or {}), **found})
            info.update(macs=macs, flops=2 * macs, nodes_with_unknown_cost=unknown,
                        macs_at={k: [int(d) for d in v.shape] for k, v in feeds.items()})
    return info, found


def graph_macs(graph: Graph, hint: dict[str, TensorType]) -> tuple[int, int]:
    """(MACs, nodes of unknown cost) of a graph, static shapes from `hint` where its own are not."""
    from vidcc.stats import total_macs

    return total_macs(TypeView(State(graph), hint), graph.nodes)


def _pipeline_summary(passes: list[dict[str, Any]], before: dict, after: dict, net: dict) -> dict[str, Any]:
    events: Counter = Counter()
    for p in passes:
        events.update(p["events"])
    per_pass = [p["changes"]["counts"] for p in passes if p["changes"]]
    ops = set(before["ops"]) | set(after["ops"])
    return {
        "passes": len(passes),
        "modified": sum(1 for p in passes if p["modified"]),
        "failed": sum(1 for p in passes if p["error"]),
        "seconds": sum(p["seconds"] for p in passes),
        "nodes_before": before["nodes"],
        "nodes_after": after["nodes"],
        "added": sum(c["added"] for c in per_pass),
        "removed": sum(c["removed"] for c in per_pass),
        "rewritten": sum(c["rewritten"] for c in per_pass),
        "precision_changes": sum(c["precision"] for c in per_pass),
        "net": {k: net[k] for k in ("added", "removed", "rewritten", "precision")},
        "ops_delta": {op: after["ops"].get(op, 0) - before["ops"].get(op, 0) for op in sorted(ops)
                      if after["ops"].get(op, 0) != before["ops"].get(op, 0)},
        "params": after["params"] - before["params"],
        "weight_bytes": after["weight_bytes"] - before["weight_bytes"],
        "macs": after["macs"] - before["macs"],
        "events": dict(sorted(events.items())),
    }


def jsonable(value: Any, _depth: int = 0) -> Any:
    """Pass details come from any plugin: make them JSON (numpy -> Python, Node -> label, sets -> lists)."""
    if _depth > 20:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item(), _depth + 1)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), _depth + 1) if value.size <= 64 else f"array{list(value.shape)} {value.dtype}"
    if isinstance(value, dict):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, _depth + 1) for v in items]
    label = getattr(value, "label", None)
    if isinstance(label, str):  # an IR Node
        return label
    return str(value)

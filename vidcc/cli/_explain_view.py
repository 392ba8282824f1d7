"""Terminal rendering of explain/diff reports (the vidcc.explain/1 dicts) with rich.

Everything printed comes from the report, so the terminal, --json and --html always agree. Names come
from user models and may contain brackets: they go into rich Text objects, never into markup strings.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from vidcc.cli._output import console
from vidcc.events import describe, group, short as _short

LIMIT = 12  # items listed per category before "... and N more" (all of them with --pass)


def signed(n: int | float | None) -> str:
    if n is None:
        return "?"
    if isinstance(n, float):
        return f"{n:+.3g}"
    return f"{n:+,}" if n else "0"


def human(n: int) -> str:
    """Short signed magnitudes for MACs / bytes: +1.2G, -340k."""
    if not n:
        return "0"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:+.3g}{unit}"
    return f"{n:+d}"


def ops_delta_text(delta: dict[str, int], limit: int = 4) -> str:
    items = sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    text = ", ".join(f"{op} {d:+d}" for op, d in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def events_text(events: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in events.items())


def _listing(label: str, items: list[str], style: str, limit: int | None) -> None:
    if not items:
        return
    shown = items if limit is None else items[:limit]
    line = Text(f"  {label} ({len(items)}): ", style=style)
    line.append(", ".join(shown))
    if len(shown) < len(items):
        line.append(f", ... and {len(items) - len(shown)} more", style="dim")
    console.print(line)


def print_changes(changes: dict[str, Any], *, limit: int | None = LIMIT) -> None:
    """The node-level part shared by explain (per pass) and diff."""
    _listing("removed", [f"{r['name']} ({r['op']})" for r in changes["removed"]], "red", limit)
    _listing("added", [f"{r['name']} ({r['op']})" for r in changes["added"]], "green", limit)
    _listing("rewritten", [f"{r['name']} ({r['op']}: {', '.join(r['what'])})" for r in changes["rewritten"]],
             "yellow", limit)
    _listing("precision", [f"{r['name']} {r['from']}->{r['to']}" for r in changes["precision"]], "magenta", limit)
    if changes["counts"]["types"]:
        console.print(Text(f"  tensor types inferred or changed: {changes['counts']['types']}", style="dim"))
    if changes["ops_delta"]:
        console.print(Text("  ops: ", style="bold").append(ops_delta_text(changes["ops_delta"], limit=limit or 10**6)))
    c = changes["cost"]
    if any(c[k] for k in ("params", "weight_bytes", "constants", "macs")):
        console.print(Text(f"  cost: params {signed(c['params'])}, bytes {signed(c['weight_bytes'])}, "
                           f"constants {signed(c['constants'])}, MACs {signed(c['macs'])}"
                           + (f" ({c['macs_unknown']} changed nodes of unknown cost)" if c["macs_unknown"] else "")))


def print_details(details: list[Any], *, limit: int | None = LIMIT) -> None:
    style = {"fused": "green", "refused": "yellow", "removed": "red", "pruned": "cyan", "routed": "blue",
             "precision": "magenta"}
    for kind, items in group(details).items():
        shown = items if limit is None else items[:limit]
        console.print(Text(f"  {kind} ({len(items)}):", style=style.get(kind, "bold")))
        for d in shown:
            console.print(Text("    " + describe(d)))
        if len(shown) < len(items):
            console.print(Text(f"    ... and {len(items) - len(shown)} more", style="dim"))


def _counts(n: dict[str, int]) -> str:
    parts = [f"+{n['added']}" if n["added"] else "", f"-{n['removed']}" if n["removed"] else "",
             f"~{n['rewritten']}" if n["rewritten"] else "", f"p{n['precision']}" if n.get("precision") else "",
             f"t{n['types']}" if n.get("types") else ""]
    return " ".join(p for p in parts if p)


def summary_table(report: dict[str, Any]) -> Table:
    """One row per pass: nodes, +added -removed ~rewritten (p = precision changes), ops, cost, events."""
    table = Table(title=Text(f"explain: {report['model']}  ({report['pipeline'] or 'empty pipeline'})"),
                  caption="+ added  - removed  ~ rewritten  p precision changed  t tensor types inferred/changed", caption_justify="left")
    for col, just in (("#", "right"), ("pass", "left"), ("nodes", "right"), ("changes", "left"), ("ops", "left"),
                      ("params", "right"), ("MACs", "right"), ("events", "left"), ("ms", "right")):
        table.add_column(col, justify=just)
    for p in report["passes"]:
        ch = p["changes"]
        if ch is None:
            table.add_row(str(p["index"]), Text(p["name"]), "", Text("failed", style="red"), "", "", "", "",
                          f"{p['seconds'] * 1e3:.1f}")
            continue
        n = ch["counts"]
        table.add_row(str(p["index"]), Text(p["name"]), f"{n['nodes_before']}->{n['nodes_after']}",
                      _counts(n) or Text("-", style="dim"), Text(ops_delta_text(ch["ops_delta"], 3)),
                      signed(ch["cost"]["params"]) if ch["cost"]["params"] else "",
                      human(ch["cost"]["macs"]) if ch["cost"]["macs"] else "",
                      Text(events_text(p["events"])), f"{p['seconds'] * 1e3:.1f}")
    s = report["summary"]
    table.add_section()
    table.add_row("", f"total {s['modified']}/{s['passes']}", f"{s['nodes_before']}->{s['nodes_after']}",
                  _counts({**s, "precision": s["precision_changes"]}), Text(ops_delta_text(s["ops_delta"], 3)),
                  signed(s["params"]) if s["params"] else "", human(s["macs"]) if s["macs"] else "",
                  Text(events_text(s["events"])), f"{s['seconds'] * 1e3:.1f}")
    return table


def print_explain(report: dict[str, Any], focus: str | None = None) -> None:
    passes = report["passes"]
    if focus is None:
        console.print(summary_table(report))
        b, a = report["before"], report["after"]
        at = f" at {report['before']['macs_at']}" if report["before"].get("macs_at") else ""
        unknown = f" ({b['nodes_with_unknown_cost']} -> {a['nodes_with_unknown_cost']} nodes of unknown cost)" \
            if b["nodes_with_unknown_cost"] or a["nodes_with_unknown_cost"] else ""
        console.print(Text(f"graph: {b['nodes']} -> {a['nodes']} nodes, params {b['params']:,} -> {a['params']:,}, "
                           f"weights {b['weight_bytes']:,} -> {a['weight_bytes']:,} bytes, "
                           f"MACs {b['macs']:,} -> {a['macs']:,}{at}{unknown}"))
        shown = [p for p in passes if p["error"] or p["details"] or (p["changes"] and _changed(p["changes"]))]
    else:
        shown = [p for p in passes if p["name"] == focus]
    for p in shown:
        _print_pass(p, limit=None if focus else LIMIT)
    if report.get("error"):
        console.print(Text(f"pipeline stopped: {report['error']}", style="red"))


def _changed(ch: dict[str, Any]) -> bool:
    n = ch["counts"]
    return bool(n["added"] or n["removed"] or n["rewritten"] or n["precision"] or n["types"]
                or any(ch["cost"][k] for k in ("params", "weight_bytes", "constants")))


def _print_pass(p: dict[str, Any], limit: int | None) -> None:
    head = Text(f"{p['index']}. {p['spec']}", style="bold")
    head.append(f"  [{p['plugin']}]  {p['seconds'] * 1e3:.1f} ms", style="dim")
    if p["lossy"]:
        head.append("  lossy", style="yellow")
    console.rule(head, align="left")
    if p["error"]:
        console.print(Text("  " + p["error"], style="red"))
    if p["stats"]:
        console.print(Text("  stats: " + ", ".join(f"{k}={_short(v)}" for k, v in p["stats"].items()), style="dim"))
    if p["changes"] is not None:
        if not _changed(p["changes"]):
            console.print(Text("  no change to the graph", style="dim"))
        print_changes(p["changes"], limit=limit)
    print_details(p["details"], limit=limit)


def print_diff(report: dict[str, Any]) -> None:
    a, b, m, ch = report["a"], report["b"], report["match"], report["changes"]
    table = Table(title="diff")
    for col in ("", "A", "B", "delta"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label in (("nodes", "nodes"), ("params", "params"), ("weight_bytes", "weight bytes"),
                       ("constants", "constants"), ("macs", "MACs"), ("nodes_with_unknown_cost", "unknown-cost nodes")):
        va, vb = a["summary"][key], b["summary"][key]
        table.add_row(label, f"{va:,}", f"{vb:,}", signed(vb - va))
    console.print(Text(f"A: {a['path']}\nB: {b['path']}"))
    console.print(table)
    console.print(Text(f"matched by name {m['name']}, output {m['output']}, structure {m['structure']}, "
                       f"neighbours {m['neighbours']}; only in A {m['unmatched_a']}, only in B {m['unmatched_b']}",
                       style="dim"))
    if not _changed(ch) and not ch["ops_delta"]:
        console.print("no differences in the graph")
    print_changes(ch)

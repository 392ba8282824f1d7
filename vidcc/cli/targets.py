"""`vidcc targets`: registered targets, whether each is available here, and why not."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("targets", help="list targets and their availability")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from vidcc import plugins

    reg = plugins.registry()
    rows = []
    for name, r in sorted(reg.targets.items()):
        a = r.obj.available()
        rows.append({"name": name, "plugin": r.plugin, "available": a.ok, "reason": a.reason, "hint": a.hint,
                     "description": r.description, "default_pipeline": r.obj.default_pipeline})
    if args.json:
        print_json({"targets": rows, "plugin_failures": reg.failures})
        return 0
    table = Table(title="vidcc targets")
    for col in ("name", "plugin", "available", "description / why not"):
        table.add_column(col)
    for r in rows:
        status = "[green]yes[/]" if r["available"] else "[red]no[/]"
        why = r["description"] if r["available"] else f"{r['reason']} — {r['hint']}".strip(" —")
        table.add_row(r["name"], r["plugin"], status, why)
    console.print(table)
    return 0

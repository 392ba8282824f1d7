"""`vidcc passes`: registered passes and pipelines, with the plugin that registered each."""

from __future__ import annotations

import dataclasses

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("passes", help="list registered passes and pipelines")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from vidcc import plugins

    reg = plugins.registry()
    rows = []
    for name, r in sorted(reg.passes.items()):
        options = {f.name: repr(f.default) if f.default is not dataclasses.MISSING else None
                   for f in dataclasses.fields(r.obj)} if dataclasses.is_dataclass(r.obj) else {}
        rows.append({"name": name, "kind": "pass", "plugin": r.plugin, "lossy": bool(getattr(r.obj, "lossy", False)),
                     "options": options, "description": r.description})
    for name, r in sorted(reg.pipelines.items()):
        rows.append({"name": name, "kind": "pipeline", "plugin": r.plugin, "lossy": False, "options": {},
                     "description": r.description, "spec": r.obj})
    if args.json:
        print_json({"passes": rows, "plugin_failures": reg.failures})
        return 0
    table = Table(title="vidcc passes")
    for col in ("name", "kind", "plugin", "options", "description"):
        table.add_column(col)
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or r.get("spec", "")
        desc = r["description"] + (" [lossy]" if r["lossy"] else "")
        table.add_row(r["name"], r["kind"], r["plugin"], opts, desc)
    console.print(table)
    for plugin, why in reg.failures.items():
        console.print(f"[yellow]plugin '{plugin}' skipped:[/] {why}", highlight=False)
    return 0

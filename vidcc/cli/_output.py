"""Terminal and JSON output shared by the commands."""

from __future__ import annotations

import json
import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def error_line(message: str) -> None:
    # One line, no markup interpretation: the message may contain brackets from user input.
    err_console.print(f"vidcc: error: {message}", markup=False, highlight=False, soft_wrap=True)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def pass_table(log):
    """A rich table of a pass log (PassRecords)."""
    from rich.table import Table

    table = Table(title="passes")
    for col, just in (("pass", "left"), ("plugin", "left"), ("changed", "left"), ("nodes", "right"),
                      ("ms", "right"), ("stats", "left")):
        table.add_column(col, justify=just)
    for r in log:
        changed = "[red]failed[/]" if r.error else ("yes" if r.modified else "no")
        stats = "; ".join(f"{k}={v}" for k, v in r.stats.items()) if not r.error else r.error
        table.add_row(r.name, r.plugin, changed, f"{r.nodes_before}->{r.nodes_after}", f"{r.seconds * 1e3:.1f}", stats)
    return table

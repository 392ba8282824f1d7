"""`vidcc tune MODEL --target tvm-llvm --budget 20m`: spend a time budget tuning for later compiles."""

from __future__ import annotations

import re

from vidcc.cli._output import console, err_console, print_json


def add_parser(sub):
    p = sub.add_parser("tune", help="tune a target for a model (results are applied by later compiles)")
    p.add_argument("model", help="an .onnx file or a zoo name")
    p.add_argument("-t", "--target", required=True, help="a target that tunes (e.g. tvm-llvm)")
    p.add_argument("-p", "--pipeline", default="", help="passes after the target's default pipeline (as for compile)")
    p.add_argument("--budget", default="20m", help="wall-clock budget: 90s, 20m, 1h (default 20m)")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs that fix the shapes (default: the model's samples)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def parse_budget(text: str) -> float:
    from vidcc.errors import VidccError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise VidccError(f"--budget expects a duration like 90s, 20m or 1h (got {text!r})")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def run(args) -> int:
    from vidcc.cli.compile import load_npz
    from vidcc.compile import tune_model

    budget = parse_budget(args.budget)
    inputs = load_npz(args.inputs) if args.inputs else None
    if args.json:
        report = tune_model(args.model, args.target, budget, pipeline=args.pipeline, inputs=inputs)
        print_json(report)
        return 0
    with err_console.status("tuning", spinner="dots") as spinner:
        report = tune_model(args.model, args.target, budget, pipeline=args.pipeline, inputs=inputs,
                            status=lambda message: spinner.update(f"[bold]{args.target}[/]: {message}"))
    from rich.table import Table

    table = Table(title=f"tuned {len(report.get('tasks', []))} of {report.get('tasks_total', '?')} tasks")
    for col in ("task", "share", "trials", "default µs", "best µs"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for t in report.get("tasks", []):
        table.add_row(t["task"], f"{t['share']:.1%}", str(t.get("trials", "-")), str(t.get("default_us", "-")),
                      str(t.get("best_after_us", t.get("error", "-"))))
    console.print(table)
    console.print(f"model: {report['model_ms_before']:.2f} ms -> {report['model_ms_after']:.2f} ms in "
                  f"{report['seconds']:.0f} s; database {report['database']}", highlight=False, soft_wrap=True)
    return 0

"""`vidcc compare MODEL --targets T1,T2,...`: speed, memory and numerical error side by side."""

from __future__ import annotations

from vidcc.cli._output import console, err_console, print_json


def add_parser(sub):
    p = sub.add_parser("compare", help="compile one model for several targets and measure them side by side")
    p.add_argument("model", help="an .onnx file or a zoo name (e.g. svd-unet:tiny)")
    p.add_argument("--targets", required=True, help="comma-separated target names, e.g. ort,tvm-llvm,trt-fp16")
    p.add_argument("-p", "--pipeline", default="", help="passes every target runs after its default pipeline")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs (default: the model's sample inputs)")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per target (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--static-shapes", action="store_true", help="specialize every target to the inputs' shapes")
    p.add_argument("--no-cache", action="store_true", help="rebuild every target")
    p.add_argument("--plot", metavar="FILE.svg", help="write a latency-vs-error plot (SVG)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from vidcc.cli.compile import load_npz
    from vidcc.compare import compare, plot_svg
    from vidcc.errors import VidccError

    if args.repeat < 1 or args.warmup < 0:
        raise VidccError("--repeat must be >= 1 and --warmup >= 0")
    if args.plot and not args.plot.endswith(".svg"):
        raise VidccError(f"--plot writes SVG: give a .svg file name, not '{args.plot}'")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    inputs = load_npz(args.inputs) if args.inputs else None
    kwargs = dict(pipeline=args.pipeline, inputs=inputs, repeat=args.repeat, warmup=args.warmup, use_cache=not args.no_cache,
                  static_shapes=args.static_shapes)
    if args.json:
        report = compare(args.model, targets, **kwargs)
    else:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                      transient=True) as bar:
            tasks = {t: bar.add_task(f"{t}: waiting", total=None) for t in targets}

            def progress(target, message):
                if target in tasks:
                    bar.update(tasks[target], description=f"[bold]{target}[/]: {message}")

            report = compare(args.model, targets, progress=progress, **kwargs)
    if args.plot:
        plot_svg(report["rows"], args.plot, f"{args.model}: latency vs error")
    if args.json:
        print_json(report)
    else:
        console.print(_table(report))
        for r in report["rows"]:
            if not r["available"]:
                console.print(f"[yellow]{r['target']}[/] unavailable: {r['reason']}" + (f" ({r['hint']})" if r["hint"] else ""))
            elif r["error"]:
                console.print(f"[red]{r['target']}[/] failed: {r['error']}")
    return 0


def _table(report):
    from rich.table import Table

    table = Table(title=f"{report['model']} — medians of {report['repeat']} runs after {report['warmup']} warm-up; "
                        "error vs ORT fp32 on the original graph")
    for col, just in (("target", "left"), ("status", "left"), ("build s", "right"), ("median ms", "right"),
                      ("p90 ms", "right"), ("peak RSS MiB", "right"), ("max abs", "right"), ("max rel", "right"),
                      ("cosine", "right"), ("PSNR dB", "right"), ("size MiB", "right")):
        table.add_column(col, justify=just)
    for r in report["rows"]:
        if not r["available"] or r["error"]:
            table.add_row(r["target"], "[yellow]unavailable[/]" if not r["available"] else "[red]failed[/]")
            continue
        status = ("[green]verified[/]" if r["verified"] else "[red]gate missed[/]") + (" (cached)" if r["cached"] else "")
        table.add_row(r["target"], status, f"{r['build_s']:.2f}", f"{r['latency_median_ms']:.2f}", f"{r['latency_p90_ms']:.2f}",
                      f"{r['peak_rss_mib']:.0f}", f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}", f"{r['cosine']:.6f}",
                      f"{r['psnr_db']:.1f}", f"{r['artifact_mib']:.2f}")
    return table

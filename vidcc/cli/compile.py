"""`vidcc compile MODEL --target T`: passes, build, verification against the ORT fp32 reference."""

from __future__ import annotations

from vidcc.cli._output import console, err_console, print_json


def add_parser(sub):
    p = sub.add_parser("compile", help="optimize, build for a target and verify against the ORT fp32 reference")
    p.add_argument("model", help="an .onnx file or a zoo name (e.g. svd-unet:tiny)")
    p.add_argument("-t", "--target", required=True, help="target name (see `vidcc targets`)")
    p.add_argument("-p", "--pipeline", default="", help="passes to run after the target's default pipeline")
    p.add_argument("--bind", action="append", metavar="NAME=V1,V2,...",
                   help="static values of an input (e.g. timesteps); repeatable; recorded in the manifest")
    p.add_argument("--schedule", metavar="NAME|steps=N,shift=S,boundary=B",
                   help="bind the timestep input to a sampler's timesteps (wan22-t2v, wan22-i2v, or explicit); "
                        "with MoE routers, one engine per distinct routing decision")
    p.add_argument("--schedule-input", metavar="NAME", help="the input the schedule binds (default: the timestep input)")
    p.add_argument("-o", "--output", help="also write the artifact directory here")
    p.add_argument("--inputs", metavar="FILE.npz", help="verification inputs (default: the model's sample inputs)")
    p.add_argument("--gate", choices=["exact", "fp16", "bf16", "lossy"], help="verification gate (default: by target "
                   "precision and the passes that ran)")
    p.add_argument("--static-shapes", action="store_true",
                   help="specialize to the shapes of the verification inputs (the artifact runs only those)")
    p.add_argument("--no-cache", action="store_true", help="rebuild even if the cache holds this artifact")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def load_npz(path: str) -> dict:
    import numpy as np

    from vidcc.errors import VidccError

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise VidccError(f"inputs file '{path}' not found") from None
    except Exception as exc:
        raise VidccError(f"'{path}' is not a readable .npz file: {exc}") from None


def run(args) -> int:
    from vidcc.compile import compile_model, parse_bindings
    from vidcc.errors import VerificationFailed

    bindings = parse_bindings(args.bind)
    inputs = load_npz(args.inputs) if args.inputs else None
    kwargs = dict(pipeline=args.pipeline, bindings=bindings, inputs=inputs, output_dir=args.output,
                  use_cache=not args.no_cache, gate=args.gate, verify_each=args.verify_each, schedule=args.schedule,
                  schedule_input=args.schedule_input, static_shapes=args.static_shapes)
    if args.json:
        result = compile_model(args.model, args.target, **kwargs)
    else:
        with err_console.status("compiling", spinner="dots") as spinner:
            result = compile_model(args.model, args.target, **kwargs,
                                   status=lambda message: spinner.update(f"[bold]{args.target}[/]: {message}"))
    summary = summarize(result)
    if args.json:
        print_json(summary)
    else:
        show(result, summary)
    if not result.verdict.passed:
        first = result.verdict.failures[0] if result.verdict.failures else "gate missed"
        more = f" (+{len(result.verdict.failures) - 1} more)" if len(result.verdict.failures) > 1 else ""
        raise VerificationFailed(f"verification failed for target '{args.target}' ({result.verdict.gate.describe()}): "
                                 f"{first}{more}; artifact kept for inspection at {result.artifact.path}")
    return 0


def summarize(result) -> dict:
    m = result.manifest
    return {"artifact": str(result.artifact.path), "output": str(result.exported_to) if result.exported_to else None,
            "cached": result.cached, "key": m["key"], "target": m["target"]["name"], "model": m["model"]["source"],
            "pipeline": m["pipeline"]["spec"], "bindings": m["bindings"],
            "nodes_before": m["graph"]["nodes_before"], "nodes_after": m["graph"]["nodes_after"],
            "build_seconds": m["build"]["seconds"], "passes": m["pass_log"],
            "verification": {"verdict": m["verification"]["verdict"], "metrics": m["verification"]["metrics"],
                             "inputs": m["verification"]["inputs"]},
            **({"routes": m["routes"]} if m.get("routes") else {})}


def show(result, summary: dict) -> None:
    from rich.table import Table

    from vidcc.cli._output import pass_table

    if result.pass_log:
        console.print(pass_table(result.pass_log))
    metrics = Table(title=f"verification against the ORT fp32 reference — gate {result.verdict.gate.describe()}")
    for col, just in (("output", "left"), ("shape", "left"), ("max abs", "right"), ("max rel", "right"),
                      ("cosine", "right"), ("PSNR dB", "right"), ("NaN/Inf", "right")):
        metrics.add_column(col, justify=just)
    for name, x in result.metrics.items():
        if x.error:
            metrics.add_row(name, "", f"[red]{x.error}[/]", "", "", "", "")
            continue
        metrics.add_row(name, "x".join(map(str, x.shape)), f"{x.max_abs:.3g}", f"{x.max_rel:.3g}", f"{x.cosine:.7f}",
                        f"{x.psnr_db:.1f}", f"{x.nan}/{x.inf}")
    console.print(metrics)
    if summary.get("routes"):
        from vidcc.specialize import routes_tables

        for table in routes_tables(summary["routes"]):
            console.print(table)
    status = "[green]passed[/]" if result.verdict.passed else "[red]FAILED[/]"
    cached = " (cached)" if result.cached else ""
    console.print(f"{summary['target']}: {summary['nodes_before']} -> {summary['nodes_after']} nodes, "
                  f"build {summary['build_seconds']:.2f} s{cached}, verification {status}", highlight=False)
    console.print(f"artifact: {summary['artifact']}" + (f"\nwritten to: {summary['output']}" if summary["output"] else ""),
                  highlight=False, soft_wrap=True)

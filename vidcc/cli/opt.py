"""`vidcc opt MODEL -p SPEC -o OUT.onnx`: run passes and write the optimized ONNX."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("opt", help="run a pass pipeline and write the optimized model")
    p.add_argument("model", help="an .onnx file or a zoo name")
    p.add_argument("-p", "--pipeline", default="", help='pass spec, e.g. "cleanup,fuse-groupnorm{silu=true}"')
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--print-ir", action="store_true", help="print the IR after the pipeline")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--keep-going", action="store_true", help="skip a failing pass instead of stopping")
    p.add_argument("--pass-timeout", type=float, default=None, help="seconds a pass may run before it is stopped")
    p.add_argument("--external-data", action="store_true", default=None, help="write weights to OUT.onnx.data")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from vidcc import model, onnx_io
    from vidcc.ir import verify
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.pipeline import build_pipeline

    passes = build_pipeline(args.pipeline)  # spec errors before any loading
    graph, source = model.load(args.model)
    feeds = source.sample_inputs()  # calibration-aware passes (prune-channels) prove shapes / measure on them
    ctx = PassContext(verify_each=args.verify_each, keep_going=args.keep_going, pass_timeout=args.pass_timeout,
                      calibration=[feeds] if feeds else None)
    run_pipeline(graph, passes, ctx)
    verify(graph, require_types=False)
    onnx_io.save(graph, args.output, external_data=args.external_data)
    if args.print_ir:
        from vidcc.printer import format_graph

        console.print(format_graph(graph), markup=False, highlight=False)
    log = [r.to_json() for r in ctx.log]
    if args.json:
        print_json({"output": args.output, "nodes": len(graph), "passes": log})
    else:
        from vidcc.cli._output import pass_table

        console.print(pass_table(ctx.log))
        console.print(f"wrote {args.output} ({len(graph)} nodes)", highlight=False)
    return 1 if any(r.error for r in ctx.log) and not args.keep_going else 0

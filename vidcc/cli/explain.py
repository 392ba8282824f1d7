"""`vidcc explain MODEL (--target T | -p SPEC)`: run a pipeline and show what each pass did."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("explain", help="run a pipeline and show, pass by pass, what it changed")
    p.add_argument("model", help="an .onnx file or a zoo name (e.g. svd-unet:tiny)")
    p.add_argument("-t", "--target", help="explain this target's default pipeline (nothing is built)")
    p.add_argument("-p", "--pipeline", help="pass spec; with --target, runs after the target's pipeline")
    p.add_argument("--json", action="store_true", help="print the vidcc.explain/1 report (docs/explain.md)")
    p.add_argument("--html", metavar="FILE", help="write a standalone HTML page with drawings of each change")
    p.add_argument("--pass", dest="focus", metavar="NAME", help="show only this pass, with every detail")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--keep-going", action="store_true", help="skip a failing pass instead of stopping")
    p.set_defaults(func=run)


def run(args) -> int:
    from vidcc import model, plugins
    from vidcc.errors import VidccError
    from vidcc.explain import explain
    from vidcc.pass_manager import PassContext
    from vidcc.pipeline import build_pipeline

    if not args.target and args.pipeline is None:
        raise VidccError("explain needs a pipeline: give --target T (its default pipeline) or -p SPEC")
    target = None
    if args.target:
        entry = plugins.registry().targets.get(args.target)
        if entry is None:
            known = ", ".join(sorted(plugins.registry().targets)) or "none registered"
            raise VidccError(f"unknown target '{args.target}' (known: {known})")
        target = entry.obj
    spec = ",".join(s for s in ((target.default_pipeline if target else ""), args.pipeline or "") if s)
    passes = build_pipeline(spec)  # spec errors before any loading
    if args.focus and args.focus not in {p.name for p in passes}:
        names = ", ".join(dict.fromkeys(p.name for p in passes)) or "none"
        raise VidccError(f"--pass {args.focus}: not in the pipeline (its passes: {names})")

    graph, source = model.load(args.model)
    feeds = source.sample_inputs()  # also the calibration of calibration-aware passes (prune-channels)
    ctx = PassContext(target=target, verify_each=args.verify_each, keep_going=args.keep_going,
                      calibration=[feeds] if feeds else None)
    result = explain(graph, passes, ctx, model=args.model, path=str(source.path), pipeline=spec, feeds=feeds)
    if args.html:
        from vidcc.report_html import render_explain, write_page

        write_page(args.html, render_explain(result.report, result.nodes))
    if args.json:
        print_json(result.report)
    else:
        from vidcc.cli._explain_view import print_explain

        print_explain(result.report, focus=args.focus)
        if args.html:
            console.print(f"wrote {args.html}", highlight=False, markup=False, soft_wrap=True)
    return 1 if result.report["error"] else 0

"""`vidcc debug-precision MODEL --dtype fp16 --cosine 0.999`: find the nodes that must stay fp32."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("debug-precision", help="bisect which nodes must stay fp32 to reach a target cosine")
    p.add_argument("model", help="an .onnx file or a zoo name")
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    p.add_argument("--cosine", type=float, default=None, help="target cosine (default: 0.999 fp16, 0.995 bf16)")
    p.add_argument("--runtime", default="tvm-llvm", choices=["tvm-llvm", "ort"],
                   help="runtime that computes in half (tvm-llvm); ort upcasts fp16 and cannot judge it")
    p.add_argument("--inputs", help=".npz of input feeds (default: the model's sample inputs)")
    p.add_argument("-p", "--pipeline", default="cleanup", help="passes to run before tagging (default: cleanup)")
    p.add_argument("--from", dest="start", choices=["policy", "naive"], default="policy",
                   help="start from tag-precision's policy or from everything in low precision")
    p.add_argument("--tag-options", default="", help='extra tag-precision options, e.g. "threshold=1000"')
    p.add_argument("--max-evals", type=int, default=60, help="most graphs to build and run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from vidcc import model
    from vidcc.errors import VidccError
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.precision_debug import debug_precision, forget_generated_dims

    graph, source = model.load(args.model)
    if args.inputs:
        with np.load(args.inputs) as data:
            feeds = {k: data[k] for k in data.files}
    else:
        feeds = source.sample_inputs()
    if feeds is None:
        from vidcc.calibration import synthetic_feeds

        synth = synthetic_feeds(graph)
        if synth is None:
            raise VidccError("no inputs: pass --inputs FILE.npz (the model has dynamic input shapes)")
        feeds = synth[0]
    # static shapes from the feeds: TVM compiles static shapes, and the search runs on these feeds only
    binds = ",".join(f'"{n}={"x".join(map(str, np.shape(feeds[n])))}"' for n in graph.inputs
                     if n in feeds and np.ndim(feeds[n]))
    spec = ",".join(p for p in (f"infer-shapes{{shapes=[{binds}]}}" if binds else "", args.pipeline) if p)
    run_pipeline(graph, spec, PassContext(calibration=[feeds]))
    forget_generated_dims(graph)
    target = args.cosine if args.cosine is not None else (0.999 if args.dtype == "fp16" else 0.995)
    say = (lambda s: None) if args.json else (lambda s: console.print(s, highlight=False, markup=False))
    say(f"{args.model}: {len(graph)} nodes; {args.dtype} on {args.runtime}, target cosine {target} "
        f"(reference: fp32 on ONNX Runtime CPU)")
    result = debug_precision(graph, feeds, dtype=args.dtype, cosine=target, runtime=args.runtime, start=args.start,
                             tag_options=args.tag_options, max_evals=args.max_evals, log=say)
    if args.json:
        print_json(result.to_json())
        return 0 if result.reached else 1
    if result.runtime_gaps:
        say(f"kept fp32 throughout, {args.runtime} cannot compute them in {args.dtype}: {', '.join(result.runtime_gaps)}")
    say(f"start ({args.start}): cosine {result.start_cosine:.6f}; {result.candidates} low compute nodes")
    if result.all_fp32_cosine is not None:
        say(f"all candidates fp32: cosine {result.all_fp32_cosine:.6f}")
    if result.note:
        say(result.note)
    if result.reached:
        say(f"minimal fp32 set ({len(result.needed)} nodes), cosine {result.final_cosine:.6f} on {args.runtime}:")
        for name in result.needed:
            say(f"  {name}")
        if result.needed:
            say(f"use: tag-precision{{dtype={args.dtype},{result.spec}}}")
    say(f"{len(result.evaluations)} graphs built and run, "
        f"{sum(e.seconds for e in result.evaluations):.1f} s")
    return 0 if result.reached else 1

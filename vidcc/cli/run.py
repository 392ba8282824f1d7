"""`vidcc run ARTIFACT [--inputs FILE.npz]`: run a compiled artifact through its target."""

from __future__ import annotations

from vidcc.cli._output import console, print_json


def add_parser(sub):
    p = sub.add_parser("run", help="run a compiled artifact on inputs")
    p.add_argument("artifact", help="an artifact directory (from `vidcc compile -o DIR` or the cache)")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs by name (default: the artifact's verification "
                   "inputs, whose outputs are then checked against the verified ones)")
    p.add_argument("--step", type=int, metavar="K", help="for an artifact with one engine per routing decision "
                   "(compiled with --bind/--schedule): the sampler step to run; its bound values are fed")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from vidcc import artifact as art
    from vidcc import verification as V
    from vidcc.cli.compile import load_npz
    from vidcc.errors import TargetError, VidccError

    artifact = art.Artifact.open(args.artifact)
    stored = args.inputs is None
    feeds = load_npz(args.inputs) if args.inputs else artifact.sample_inputs()
    if feeds is None:
        raise VidccError(f"artifact '{args.artifact}' holds no sample inputs; pass --inputs FILE.npz")
    V.check_feeds(feeds, artifact.manifest["graph"]["inputs"])
    from vidcc import specialize

    step_row = None
    if specialize.is_routed(artifact.manifest):
        step = args.step if args.step is not None else specialize.step_for_feeds(artifact.manifest, feeds)
        if step is None:
            raise VidccError("this artifact has one engine per routing decision: give --step K")
        stored = stored and step == artifact.manifest["verification"]["inputs"].get("step", 0)
        runner, step_row = specialize.engine_runner(artifact, step)
        feeds = specialize.bind_step(artifact.manifest, feeds, step)
    elif args.step is not None:
        raise VidccError("--step applies to artifacts compiled with --bind/--schedule and routers; this one has one engine")
    else:
        runner = artifact.runner()
    try:
        outputs = runner.run(feeds)
    except VidccError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TargetError(f"{artifact.target_name}: run failed: {type(exc).__name__}: {first}") from None
    if args.output:
        art.save_npz_atomic(__import__("pathlib").Path(args.output), outputs)
    reproduced = None
    if stored and (verified := artifact.verified_outputs()) is not None:
        reproduced = {k: float(np.abs(outputs[k].astype(np.float64) - v.astype(np.float64)).max()) if k in outputs else None
                      for k, v in verified.items()}
    rows = {k: {"shape": list(v.shape), "dtype": v.dtype.name,
                "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None,
                "mean": float(v.mean()) if v.size and v.dtype.kind in "fiub" else None} for k, v in outputs.items()}
    if args.json:
        print_json({"artifact": str(artifact.path), "target": artifact.target_name, "outputs": rows,
                    "written": args.output, "max_abs_diff_to_verified": reproduced,
                    **({"step": step_row} if step_row else {})})
        return 0
    from rich.table import Table

    where = f" — step {step_row['step']}, engine {step_row['engine']}" if step_row else ""
    table = Table(title=f"{artifact.target_name} outputs{where}")
    for col in ("output", "shape", "dtype", "min", "max", "mean") + (("vs verified",) if reproduced else ()):
        table.add_column(col)
    for k, r in rows.items():
        cells = [k, "x".join(map(str, r["shape"])), r["dtype"]] + [f"{r[c]:.4g}" if r[c] is not None else "" for c in ("min", "max", "mean")]
        if reproduced:
            cells.append(f"max abs diff {reproduced.get(k):.3g}" if reproduced.get(k) is not None else "-")
        table.add_row(*cells)
    console.print(table)
    if args.output:
        console.print(f"wrote {args.output}", highlight=False)
    return 0

"""fp16/bf16 with vidcc's precision passes vs a naive whole-graph conversion, on the zoo models.

    python bench/precision.py [--models svd-unet,wan-dit] [--sizes tiny,small] [--dtypes fp16,bf16]

For each model: the zoo export -> `cleanup` (what every target runs first) = the fp32 graph. Reference:
that graph on ONNX Runtime CPU in fp32. Then
- vidcc: tag-precision{dtype=D},materialize-precision (bf16 on TVM adds keep_extra=[LayerNormalization]:
  TVM's layer_norm has no bf16 kernel);
- naive fp16: onnxconverter-common's float16.convert_float_to_float16(keep_io_types=True) on the same
  graph (`pip install onnxconverter-common`; not a vidcc dependency);
- naive bf16: tag-precision with every rule off (all float nodes bf16), there being no bf16 converter.
Each graph is built and run with TVM Relax on LLVM, which really computes in half (ORT CPU upcasts fp16
and has no bf16 kernels, so it cannot judge). Reported: cosine (worst output) vs the reference, Casts
added, the tag counts, and errors where a runtime refuses a graph. JSON: bench/results/precision.json.

    python bench/precision.py --big svd-unet:full [--bind sample=1x14x8x72x128,...]

builds (does not run) a big model's fp16 graph in TVM, vidcc's and onnxconverter-common's, each step in
its own process with its peak RSS (bench/results/precision-svd-unet-full.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after an installed vidcc, for bench._results

import numpy as np  # noqa: E402

from bench._results import write_result  # noqa: E402
from vidcc.precision_debug import forget_generated_dims as drop_generated_dims  # noqa: E402

GATES = {"fp16": 0.999, "bf16": 0.995}
ZOO_DIR = os.environ.get("VIDCC_BENCH_ZOO_DIR", "")  # DIR/<name>_<size>/model.onnx: exports made elsewhere


def _casts(graph) -> int:
    return len(graph.nodes_by_op("Cast"))


def _tvm_cosine(graph_or_proto, feeds, reference) -> tuple[float | None, str | None, float]:
    from vidcc.halfrun import min_cosine, run_tvm_llvm

    t0 = time.perf_counter()
    try:
        out = run_tvm_llvm(graph_or_proto, feeds, accumulate=os.environ.get("VIDCC_BENCH_ACCUMULATE", "fp32"))
        return min_cosine(out, reference), None, time.perf_counter() - t0
    except Exception as exc:  # a graph TVM refuses is a result, not a crash of the bench
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return None, msg, time.perf_counter() - t0


def prepare_spec(graph, feeds) -> tuple[str, object]:
    """Static input shapes (TVM compiles static shapes) + the tvm-llvm-fp16 target's pipeline minus
    precision (cleanup and fusions in the forms TVM imports); the target object for ctx.supports."""
    from vidcc import plugins

    binds = ",".join(f'"{n}={"x".join(map(str, feeds[n].shape))}"' for n in graph.inputs if n in feeds and feeds[n].ndim)
    entry = plugins.registry().targets.get("tvm-llvm-fp16")
    target = getattr(entry, "obj", None)
    standard = "cleanup,fuse-groupnorm,fuse-layernorm,fuse-rmsnorm,fuse-gelu,fuse-silu,fuse-attention"
    if target is not None:
        standard = ",".join(p for p in _split(target.default_pipeline) if "precision" not in p)
    return f"infer-shapes{{shapes=[{binds}]}},{standard}", target


def _split(spec: str) -> list[str]:
    from vidcc.pipeline import parse_spec

    out = []
    for item in parse_spec(spec):
        opts = ",".join(f"{k}={v}" if not isinstance(v, list) else f"{k}=[{','.join(v)}]" for k, v in item.options.items())
        out.append(item.name + (f"{{{opts}}}" if opts else ""))
    return out


def naive_fp16(graph):
    from onnxconverter_common import float16

    from vidcc import onnx_io

    proto = onnx_io.to_proto(graph)
    return float16.convert_float_to_float16(proto, keep_io_types=True)


def prepare(spec: str, work: Path) -> dict:
    """Export, bind shapes, clean and fuse; save the fp32 graph, feeds and its ORT reference in work/."""
    from vidcc import onnx_io, zoo
    from vidcc.halfrun import min_cosine, run_ort
    from vidcc.pass_manager import PassContext, run_pipeline

    t0 = time.perf_counter()
    staged = Path(ZOO_DIR) / spec.replace(":", "_") if ZOO_DIR else None
    if staged is not None and (staged / "model.onnx").is_file():  # exported elsewhere, carried here
        model_path, inputs_path = staged / "model.onnx", staged / "inputs.npz"
        meta = json.loads((staged / "meta.json").read_text()) if (staged / "meta.json").is_file() else {}
        exporter, opset = meta.get("exporter"), meta.get("opset")
    else:
        exp = zoo.export(spec)
        model_path, inputs_path, exporter, opset = exp.model_path, exp.inputs_path, exp.exporter, exp.opset
    with np.load(inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    graph = onnx_io.load(model_path)
    row: dict = {"model": spec, "exporter": exporter, "opset": opset, "nodes_raw": len(graph)}
    prep, target = prepare_spec(graph, feeds)
    bindings = {}
    if any(graph.nodes_by_op(op) for op in ("If", "TopK", "ArgMax")) and "timestep" in feeds:
        # a timestep-switched MoE (Wan2.2's If): bind the sample's timestep so precompute-routers keeps
        # the expert it picks (vidcc compile --bind timestep=...); token-level routers stay as they are
        bindings = {"timestep": [float(np.asarray(feeds["timestep"]).reshape(-1)[0])]}
        prep = prep.replace("infer-shapes", "precompute-routers,infer-shapes", 1)
    run_pipeline(graph, prep, PassContext(target=target, calibration=[feeds], bindings=bindings))
    row["prepare"] = prep
    row["bindings"] = bindings
    row["generated_dims_dropped"] = drop_generated_dims(graph)
    row["nodes"] = len(graph)
    row["ops"] = {op: n for op, n in graph.op_histogram().most_common(12)}
    row["casts_fp32_graph"] = _casts(graph)
    reference = run_ort(graph, feeds)
    row["prepared_cosine_vs_raw_export"] = min_cosine(reference, run_ort(model_path, feeds))
    row["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    d = work / spec.replace(":", "_")
    d.mkdir(parents=True, exist_ok=True)
    onnx_io.save(graph, d / "model.onnx")
    np.savez(d / "inputs.npz", **feeds)
    np.savez(d / "reference.npz", **reference)
    (d / "prepare.json").write_text(json.dumps(row, default=str))
    return row


def measure(spec: str, dtype: str, variant: str, work: Path) -> dict:
    """One (model, dtype, vidcc|naive) measurement on TVM llvm from the prepared graph."""
    from vidcc import onnx_io
    from vidcc.halfrun import min_cosine, run_ort
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.precision_debug import NAIVE

    d = work / spec.replace(":", "_")
    graph = onnx_io.load(d / "model.onnx")
    feeds, reference = dict(np.load(d / "inputs.npz")), dict(np.load(d / "reference.npz"))
    base = _casts(graph)
    out: dict = {"model": spec, "dtype": dtype, "variant": variant}
    t1 = time.perf_counter()
    if variant == "fp32":  # TVM's own fp32 result: what the half-precision numbers sit on
        proto = onnx_io.to_proto(graph)
        out["how"] = "the prepared fp32 graph"
    elif variant == "vidcc":
        extra = ",keep_extra=[LayerNormalization]" if dtype == "bf16" else ""
        spec_str = f"tag-precision{{dtype={dtype}{extra}}},materialize-precision"
        ctx = PassContext(calibration=[feeds])
        run_pipeline(graph, spec_str, ctx)
        tag, mat = ctx.log[0].stats, ctx.log[1].stats
        out.update({"how": spec_str, "pass_seconds": round(time.perf_counter() - t1, 2),
                    "casts_inserted": mat.get("casts_inserted"), "casts_added": _casts(graph) - base,
                    "tags": {k: v for k, v in tag.items() if k != "dtype"},
                    "opset_raised_to": mat.get("opset_raised_to")})
        if dtype == "fp16":
            out["ort_cpu_cosine_upcast"] = min_cosine(run_ort(graph, feeds), reference)
        proto = onnx_io.to_proto(graph)
    elif dtype == "fp16":
        proto = naive_fp16(graph)
        out["how"] = "onnxconverter-common float16.convert_float_to_float16(keep_io_types=True)"
        out["casts_added"] = sum(1 for n in proto.graph.node if n.op_type == "Cast") - base
    else:
        run_pipeline(graph, f"tag-precision{{dtype=bf16,{NAIVE},keep_extra=[LayerNormalization]}},materialize-precision",
                     PassContext())
        out["how"] = ("every float node bf16 but LayerNormalization (TVM has no bf16 layer_norm): tag-precision "
                      "with every rule off; no bf16 converter exists")
        out["casts_added"] = _casts(graph) - base
        proto = onnx_io.to_proto(graph)
    cos, err, secs = _tvm_cosine(proto, feeds, reference)
    gate = GATES.get(dtype, 0.99999)
    out.update({"tvm_llvm_cosine": cos, "tvm_error": err, "tvm_seconds": round(secs, 1), "gate": gate,
                "accumulate": os.environ.get("VIDCC_BENCH_ACCUMULATE", "fp32"),
                "passes_gate": cos is not None and cos >= gate})
    return out


def _task(args):
    kind, spec, dtype, variant, work = args
    try:
        if kind == "prepare":
            return prepare(spec, Path(work))
        done = Path(work) / spec.replace(":", "_") / f"{dtype}_{variant}.json"
        if done.is_file():  # resumable: a measurement already made is kept
            return json.loads(done.read_text())
        out = measure(spec, dtype, variant, Path(work))
        done.write_text(json.dumps(out, default=str))
        return out
    except Exception as exc:
        traceback.print_exc()
        return {"model": spec, "dtype": dtype, "variant": variant, "phase": kind,
                "error": f"{type(exc).__name__}: {exc}"[:500]}


def _pool(tasks, jobs):
    if jobs <= 1:
        return [_task(t) for t in tasks]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        return list(pool.imap(_task, tasks))


# ---- a big model (svd-unet:full): does the fp16 graph build in TVM at all? ------------------------------
# Each step is a child process (`--big-step`), so its peak RSS is its own and memory is returned between
# steps. No calibration (an fp32 run at 14x72x128 is ~45 TFLOP and GBs of activations on a shared 2-core
# machine): the magnitude rule is off.
def big_step(step: str, spec: str, shapes: str, work: Path) -> dict:
    import resource

    from vidcc import onnx_io
    from vidcc.pass_manager import PassContext, run_pipeline

    t0 = time.perf_counter()
    fp32, out = work / "fp32" / "model.onnx", {"step": step}
    if step == "prepare":  # bound shapes + cleanup: the graph both conversions start from
        from vidcc import model as models

        graph = onnx_io.load(models.resolve(spec).path)
        out["pipeline"] = "infer-shapes{shapes=[%s]},cleanup" % ",".join(f'"{x}"' for x in shapes.split(","))
        run_pipeline(graph, out["pipeline"], PassContext())
        out.update(nodes=len(graph), casts=_casts(graph), ops=dict(graph.op_histogram().most_common(8)))
        onnx_io.save(graph, fp32)
    elif step == "vidcc":
        graph = onnx_io.load(fp32)
        base = _casts(graph)
        ctx = PassContext()
        out["pipeline"] = "tag-precision{dtype=fp16,calibrate=false},materialize-precision"
        run_pipeline(graph, out["pipeline"], ctx)
        out.update(tags={k: v for k, v in ctx.log[0].stats.items() if k != "dtype"}, casts_added=_casts(graph) - base)
        onnx_io.save(graph, work / "vidcc" / "model.onnx")
    elif step == "naive":  # onnxconverter-common needs the weights in memory (6 GB fp32, converted in place)
        import onnx
        from onnxconverter_common import float16

        model = onnx.load(str(fp32))
        base = sum(n.op_type == "Cast" for n in model.graph.node)
        # its shape inference serializes the model, which protobuf refuses beyond 2 GB; the saved graph
        # carries every tensor's type already
        model = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        out["casts_added"] = sum(n.op_type == "Cast" for n in model.graph.node) - base
        (work / "naive").mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(work / "naive" / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    else:  # build-vidcc / build-naive: TVM Relax import + compile for LLVM, as vidcc.halfrun does
        import gc

        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        from vidcc.halfrun import llvm_target

        try:
            model = onnx.load(str(work / step.split("-", 1)[1] / "model.onnx"))
            opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            mod = relax.transform.DecomposeOpsForInference()(from_onnx(model, opset=opset, keep_params_in_input=False))
            del model  # the weights now live in the module
            gc.collect()
            out["import_seconds"] = round(time.perf_counter() - t0, 1)
            exe = tvm.compile(mod, target=tvm.target.Target(llvm_target()))
            out["builds"] = exe is not None
        except Exception as exc:  # the naive graph's expected failure is a result
            out.update(builds=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def big(spec: str, shapes: str, work: Path, steps: list[str], name: str) -> int:
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    done = work / "steps.json"
    rows = json.loads(done.read_text()) if done.is_file() else {}
    for step in steps:
        if step in rows:  # resumable, like the small-model phases
            continue
        cmd = [sys.executable, __file__, "--big", spec, "--bind", shapes, "--work", str(work.parent), "--big-step", step]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        rows[step] = json.loads(lines[-1]) if lines else {"step": step, "error": proc.stderr.strip()[-500:]}
        print(json.dumps(rows[step], default=str), flush=True)
        done.write_text(json.dumps(rows, default=str))
    data = {"model": spec, "shapes": shapes, "runtime": "TVM Relax 0.27 LLVM CPU (build only)", "steps": rows}
    print(f"wrote {write_result(name, data)}")
    return 0


def main() -> int:
    from vidcc.zoo import ENTRIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ENTRIES), help="zoo entries, comma-separated")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--variants", default="vidcc,naive")
    parser.add_argument("--phase", choices=["prepare", "measure", "all"], default="all",
                        help="prepare graphs, measure them (resumable: done measurements are kept), or both")
    parser.add_argument("--work", default="/tmp/vidcc-bench-precision", help="prepared graphs between phases")
    parser.add_argument("--fp32", action="store_true", help="also run the fp32 graph on TVM (its own baseline)")
    parser.add_argument("--accumulate", choices=["fp32", "low"], default="fp32",
                        help="MatMul/Conv accumulators: fp32 as GPU libraries (default), or the low dtype (stricter)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one model/dtype/variant each)")
    parser.add_argument("--name", default="precision", help="result file name under bench/results/")
    parser.add_argument("--measured-on", default="", help="where the measurements ran, when not this machine")
    parser.add_argument("--out", default="", help="also write the JSON here (e.g. on a remote machine)")
    parser.add_argument("--big", default="", help="a big model (svd-unet:full): build-only check of fp16 in TVM")
    parser.add_argument("--bind", default="sample=1x14x8x72x128,timestep=1,encoder_hidden_states=1x1x1024,"
                        "added_time_ids=1x3", help="--big: input shapes (the published 14x576x1024)")
    parser.add_argument("--big-steps", default="prepare,vidcc,naive,build-naive,build-vidcc")
    parser.add_argument("--big-step", default="", help=argparse.SUPPRESS)  # one step, in a child process
    args = parser.parse_args()
    os.environ["VIDCC_BENCH_ACCUMULATE"] = args.accumulate  # read by the measuring processes
    if args.big:
        work = Path(args.work) / args.big.replace(":", "_")
        if args.big_step:
            print(json.dumps(big_step(args.big_step, args.big, args.bind, work), default=str))
            return 0
        return big(args.big, args.bind, work, args.big_steps.split(","), f"{args.name}-{args.big.replace(':', '-')}")
    work = Path(args.work)
    specs = [f"{m}:{s}" for s in args.sizes.split(",") for m in args.models.split(",")]
    start = time.time()
    if args.phase in ("prepare", "all"):
        todo = [s for s in specs if not (work / s.replace(":", "_") / "prepare.json").is_file()]
        for row in _pool([("prepare", s, "", "", str(work)) for s in todo], args.jobs):
            print(json.dumps(row, default=str)[:400], flush=True)
        if args.phase == "prepare":
            return 0
    prepared = [s for s in specs if (work / s.replace(":", "_") / "model.onnx").is_file()]
    tasks = [("measure", s, dt, v, str(work)) for s in prepared for dt in args.dtypes.split(",")
             for v in args.variants.split(",")]
    if args.fp32:
        tasks += [("measure", s, "fp32", "fp32", str(work)) for s in prepared]
    rows = []
    for spec in specs:
        f = work / spec.replace(":", "_") / "prepare.json"
        rows.append(json.loads(f.read_text()) if f.is_file() else {"model": spec, "error": "not prepared"})
    by_spec = {r["model"]: r for r in rows}
    for m in _pool(tasks, args.jobs):
        print(json.dumps(m, default=str)[:400], flush=True)
    for spec in specs:  # every measurement on disk, this run's and earlier runs' (the phases resume)
        for f in sorted((work / spec.replace(":", "_")).glob("*_*.json")):
            m = json.loads(f.read_text())
            by_spec[spec].setdefault(m["dtype"], {})[m["variant"]] = m
    data = {"runtime": "TVM Relax 0.27 LLVM CPU (fp16 computed in half; bf16 legalized to fp32 math rounded to "
                       "bf16 per op; MatMul/Conv accumulate in " + args.accumulate + "); reference: the prepared "
                       "fp32 graph on ONNX Runtime CPU",
            "accumulate": args.accumulate,
            "gates": GATES, "rows": rows, "seconds": round(time.time() - start, 1)}
    if args.measured_on:
        data["measured_on"] = args.measured_on
    path = write_result(args.name, data)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ORT CPU: the vidcc-optimized graph vs the raw export vs ORT's own transformers optimizer.

    python bench/ort_fusion.py [--model svd-unet:small] [--exporter legacy] [--runs 7] [--threads 0]

All variants run in one process, interleaved round by round (so machine noise hits each alike);
the median of --runs timed runs is reported per variant, with the speedup over the raw export and
the numerical error against it. ORT's optimizer runs as is (`ort-optimizer`) and with its CUDA-only
fusions off (`ort-optimizer-cpu`). Writes bench/results/<--out>.json (default ort_fusion.json), with the
load average before and after the timed runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import write_result  # noqa: E402


def vidcc_optimize(src: Path, feeds: dict, spec: str, dst: Path) -> dict:
    from vidcc import onnx_io, plugins
    from vidcc.pass_manager import PassContext, run_pipeline

    graph = onnx_io.load(src)
    shapes = ",".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items() if k in graph.inputs and v.ndim)
    target = plugins.registry().targets["ort"].obj
    ctx = PassContext(target=target)
    start = time.perf_counter()
    run_pipeline(graph, f"infer-shapes{{shapes=[{shapes}]}},{spec}", ctx)
    seconds = time.perf_counter() - start
    onnx_io.save(graph, dst)
    stats = {}
    for rec in ctx.log:
        if rec.name.startswith(("fuse-", "unpack-", "temporal-")):
            stats.update({k: v for k, v in rec.stats.items()
                          if (isinstance(v, str) and "/" in v) or k.startswith("emitted")})
    return {"pipeline": spec, "optimize_seconds": round(seconds, 2), "nodes": len(graph), "fused": stats}


# optimize_model's unet fusions that emit CUDA-only ops (NhwcConv, GroupNorm, BiasSplitGelu, BiasAdd) or
# packed QKV (which ORT's CPU MultiHeadAttention does not take): off for the "-cpu" variant
CUDA_ONLY_FUSIONS = ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                     "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")


def ort_optimizer(src: Path, dst: Path, cpu_only: bool = False) -> dict:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    for name in CUDA_ONLY_FUSIONS if cpu_only else ():
        setattr(options, name, False)
    start = time.perf_counter()
    model = optimize_model(str(src), model_type="unet", opt_level=0, use_gpu=False, optimization_options=options)
    model.save_model_to_file(str(dst))
    return {"optimize_seconds": round(time.perf_counter() - start, 2), "nodes": len(model.model.graph.node)}


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def error(ref: np.ndarray, out: np.ndarray) -> dict:
    rel = float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
    cos = float(np.dot(out.ravel().astype(np.float64), ref.ravel()) /
                (np.linalg.norm(out.astype(np.float64)) * np.linalg.norm(ref.astype(np.float64)) + 1e-30))
    return {"rel": rel, "cosine": cos}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="svd-unet:small")
    p.add_argument("--exporter", default="legacy")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    p.add_argument("--pipeline", default=None, help="default: the ort target's default pipeline")
    p.add_argument("--out", default="ort_fusion")
    args = p.parse_args(argv)

    from vidcc import plugins, zoo

    args.pipeline = args.pipeline or plugins.registry().targets["ort"].obj.default_pipeline
    exp = zoo.export(args.model, exporter=args.exporter)
    feeds = dict(np.load(exp.inputs_path))
    work = Path(tempfile.mkdtemp(prefix="vidcc-bench-"))
    variants: dict[str, dict] = {"raw": {"path": exp.model_path}}
    for name, spec in (("vidcc", args.pipeline), ("vidcc-cleanup", "cleanup")):
        info = vidcc_optimize(exp.model_path, feeds, spec, work / f"{name}.onnx")
        variants[name] = {"path": work / f"{name}.onnx", **info}
    for name, cpu_only in (("ort-optimizer", False), ("ort-optimizer-cpu", True)):
        try:
            dst = work / f"{name}.onnx"
            variants[name] = {"path": dst, **ort_optimizer(exp.model_path, dst, cpu_only)}
        except Exception as exc:  # it crashes on some exports: that is a result too
            variants[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                              "trace": traceback.format_exc(limit=3)[-600:]}

    sessions = {}
    for name, v in variants.items():
        if "path" not in v:
            continue
        try:
            sessions[name] = session(v["path"], args.threads)
        except Exception as exc:
            v["error"] = f"session: {str(exc).strip().splitlines()[0][:300]}"
    outputs = {}
    for name, s in sessions.items():
        want = {i.name for i in s.get_inputs()}
        fd = {k: v for k, v in feeds.items() if k in want}
        for _ in range(args.warmup):
            outputs[name] = s.run(None, fd)[0]
    times = {name: [] for name in sessions}
    load_before = os.getloadavg()  # the machine is shared: say how busy it was
    for _ in range(args.runs):
        for name, s in sessions.items():
            want = {i.name for i in s.get_inputs()}
            fd = {k: v for k, v in feeds.items() if k in want}
            start = time.perf_counter()
            s.run(None, fd)
            times[name].append(time.perf_counter() - start)

    raw_median = float(np.median(times["raw"]))
    results = {}
    for name, v in variants.items():
        r = {k: val for k, val in v.items() if k != "path"}
        if name in times:
            med = float(np.median(times[name]))
            r.update(median_ms=round(med * 1e3, 2), min_ms=round(min(times[name]) * 1e3, 2),
                     runs_ms=[round(t * 1e3, 2) for t in times[name]], speedup_vs_raw=round(raw_median / med, 3),
                     **error(outputs["raw"], outputs[name]))
        results[name] = r
    for name in ("ort-optimizer", "ort-optimizer-cpu"):
        if "median_ms" in results.get(name, {}):
            results["vidcc"][f"speedup_vs_{name.replace('-', '_')}"] = round(
                results[name]["median_ms"] / results["vidcc"]["median_ms"], 3)
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]}
    data = {"model": args.model, "exporter": args.exporter, "runs": args.runs, "threads": args.threads or "default",
            "load_average_1_5_15min": load, "results": results}
    path = write_result(args.out, data)
    for name, r in results.items():
        line = f"{name:17s} " + (f"median {r['median_ms']:9.1f} ms  x{r['speedup_vs_raw']:.2f} vs raw  rel {r['rel']:.1e}"
                                 if "median_ms" in r else f"error: {r.get('error')}")
        print(line)
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

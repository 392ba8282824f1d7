"""Structured pruning bench: parameters, bytes, MACs, ONNX Runtime CPU latency and output similarity of
`prune-channels{ratio=R}` against the same model unpruned, both prepared by the same pipeline.

    python bench/prune.py                                   # svd-unet:small and wan-dit:small at 0.3
    python bench/prune.py --models svd-unet:tiny --runs 5   # quick look

Latency: both graphs in one process, one ORT CPU session each, runs interleaved (base, pruned, base,
...) so drift hits both alike; medians of --runs timed runs after --warmup. --profile adds ORT's
kernel time per op type of both graphs (a profiled session each, after the timed runs). Writes
bench/results/prune.json (machine, commit, command, versions)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402
from bench.ort_fusion import session  # noqa: E402


def interleaved_medians(sessions: list, feeds: dict, runs: int, warmup: int) -> list[dict]:
    names = [{i.name for i in s.get_inputs()} for s in sessions]
    args = [{k: v for k, v in feeds.items() if k in n} for n in names]
    for _ in range(warmup):
        for s, a in zip(sessions, args):
            s.run(None, a)
    samples = [[] for _ in sessions]
    for _ in range(runs):
        for i, (s, a) in enumerate(zip(sessions, args)):
            t0 = time.perf_counter()
            s.run(None, a)
            samples[i].append((time.perf_counter() - t0) * 1e3)
    return [{"median_ms": round(float(np.median(x)), 3), "min_ms": round(float(np.min(x)), 3),
             "samples_ms": [round(v, 3) for v in x]} for x in samples]


def op_profile(path: Path, feeds: dict, threads: int, runs: int = 3) -> dict[str, float]:
    """Mean kernel ms per op type over `runs` runs after a warm-up, from ORT's profiler: where the
    time goes (the sum is below the wall time: no session overhead, no thread-pool waits)."""
    import json

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    args = {k: v for k, v in feeds.items() if k in names}
    for _ in range(runs + 1):
        sess.run(None, args)
    events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    first = starts[-runs] if len(starts) >= runs else 0  # the warm-up run is left out
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / runs
    return {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def bench_model(spec: str, args) -> dict:
    from vidcc import onnx_io, zoo
    from vidcc.compile import get_target
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.verification import metrics

    exp = zoo.export(spec, exporter=args.exporter) if args.exporter else zoo.export(spec)
    feeds = dict(np.load(exp.inputs_path))
    graph = onnx_io.load(exp.model_path)
    ctx = PassContext(calibration=[feeds], target=get_target(args.target) if args.target else None)
    t0 = time.perf_counter()
    run_pipeline(graph, args.pre, ctx)
    pre_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="vidcc-prune-bench-") as tmp:
        base = onnx_io.save(graph, Path(tmp) / "base.onnx")
        spec_prune = (f"prune-channels{{ratio={args.ratio},criterion={args.criterion},round_to={args.round_to},"
                      f"head_rounding={args.head_rounding}}}")
        t0 = time.perf_counter()
        run_pipeline(graph, spec_prune, ctx)
        prune_s = time.perf_counter() - t0
        record = ctx.log[-1]
        if record.error:
            raise SystemExit(f"{spec}: {record.error}")
        pruned = onnx_io.save(graph, Path(tmp) / "pruned.onnx")
        sessions = [session(base, args.threads), session(pruned, args.threads)]
        outs = []
        for s in sessions:
            names = {i.name for i in s.get_inputs()}
            outs.append(dict(zip([o.name for o in s.get_outputs()], s.run(None, {k: v for k, v in feeds.items() if k in names}))))
        quality = {k: metrics(k, outs[1][k], outs[0][k]).to_json() for k in outs[0]}
        load = [os.getloadavg()[0]]  # other jobs on the cores shrink the ratio: record how busy they were
        lat = interleaved_medians(sessions, feeds, args.runs, args.warmup)
        load.append(os.getloadavg()[0])
        profile = {"unpruned": op_profile(base, feeds, args.threads),
                   "pruned": op_profile(pruned, feeds, args.threads)} if args.profile else None
    summary = next(d for d in record.details if d["kind"] == "summary")
    p0, p1 = summary["params"]
    b0, b1 = summary["weight_bytes"]
    m0, m1 = summary["macs"]
    worst = min(quality.values(), key=lambda m: m["cosine"])
    result = {
        "model": spec, "exporter": exp.exporter, "pre_pipeline": args.pre, "target": args.target,
        "spec": spec_prune, "ratio": args.ratio,
        "params": [p0, p1], "params_reduction": round(1 - p1 / p0, 4),
        "weight_bytes": [b0, b1], "bytes_reduction": round(1 - b1 / b0, 4),
        "macs": [m0, m1], "macs_reduction": round(1 - m1 / m0, 4),
        "channels": summary["channels"], "groups": record.stats["groups"],
        "latency_ms": {"unpruned": lat[0], "pruned": lat[1]},
        "speedup": round(lat[0]["median_ms"] / lat[1]["median_ms"], 3),
        "load_avg_1min": [round(x, 2) for x in load],
        "cosine": worst["cosine"], "psnr_db": worst["psnr_db"], "outputs": quality,
        "seconds": {"pre_pipeline": round(pre_s, 2), "prune": round(prune_s, 2)},
        "refused": [d for d in record.details if d["kind"] == "refused"][:20],
        **({"kernel_ms_per_op": profile} if profile else {}),
        "goals": {"params_and_bytes_at_least_45pct_lower": p1 <= 0.55 * p0 and b1 <= 0.55 * b0,
                  "latency_at_least_1.5x_lower": lat[0]["median_ms"] >= 1.5 * lat[1]["median_ms"]},
    }
    print(f"{spec}: params {p0} -> {p1} (-{100 * result['params_reduction']:.1f}%), bytes -{100 * result['bytes_reduction']:.1f}%, "
          f"MACs -{100 * result['macs_reduction']:.1f}%, ORT CPU {lat[0]['median_ms']:.1f} -> {lat[1]['median_ms']:.1f} ms "
          f"({result['speedup']:.2f}x), cosine {worst['cosine']:.4f}, PSNR {worst['psnr_db']} dB", flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="svd-unet:small,wan-dit:small")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--criterion", default="l1", choices=["l1", "l2", "taylor"])
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--head-rounding", default="up", choices=["up", "nearest"])
    ap.add_argument("--pre", default="cleanup,fuse", help="pipeline applied to both graphs before pruning")
    ap.add_argument("--target", default="ort", help="target whose ops the fusions emit ('' for none)")
    ap.add_argument("--exporter", default="", help="zoo exporter (default: the entry's)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    ap.add_argument("--profile", action="store_true", help="also record ORT kernel time per op type")
    ap.add_argument("--name", default="prune", help="results file name")
    args = ap.parse_args(argv)
    results = [bench_model(m.strip(), args) for m in args.models.split(",") if m.strip()]
    path = write_result(args.name, {"ratio": args.ratio, "results": results,
                                    "note": "zoo models carry deterministic random weights: no learned redundancy, so "
                                            "output similarity after pruning is far below what trained weights give"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MoE expert specialization: weight bytes per engine and per-step latency on ONNX Runtime CPU,
specialized engines vs the unspecialized graph, both through the ort target's default pipeline.

    python bench/moe.py                                   # wan22-moe:tiny, moe-dit-trouter:tiny, wan22-t2v
    python bench/moe.py --models wan22-moe:small --schedule wan22-i2v --runs 30

For each timed engine (one per routing decision; the --max-timed serving most steps) the first step
it serves is timed, alternating with the unspecialized graph fed the same inputs, in one process
(medians). `timed_steps_total_ms` sums the per-engine medians over the steps those engines serve.
Writes bench/results/moe.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import write_result  # noqa: E402


def session(graph, threads: int):
    import onnxruntime as ort

    from vidcc import onnx_io

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_io.to_proto(graph).SerializeToString(), so, providers=["CPUExecutionProvider"])


def optimize(graph, target):
    from vidcc.pass_manager import PassContext, run_pipeline

    run_pipeline(graph, target.default_pipeline, PassContext(target=target))
    return graph


def interleaved(fa, fb, runs: int, warmup: int = 3) -> tuple[float, float]:
    """Medians (ms) of fa and fb, alternating so that load on the shared cores hits both alike."""
    for _ in range(warmup):
        fa(), fb()
    a, b = [], []
    for _ in range(runs):
        t0 = time.perf_counter(); fa(); a.append((time.perf_counter() - t0) * 1e3)  # noqa: E702
        t0 = time.perf_counter(); fb(); b.append((time.perf_counter() - t0) * 1e3)  # noqa: E702
    return float(np.median(a)), float(np.median(b))


def bench_model(name: str, schedule: str, runs: int, threads: int, max_timed: int) -> dict:
    from vidcc import onnx_io, plugins, zoo
    from vidcc.compile import get_target
    from vidcc.schedules import parse_schedule
    from vidcc.specialize import feeds_for

    moe = plugins.registry().passes["precompute-routers"].obj
    target = get_target("ort")
    e = zoo.export(name)
    with np.load(e.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    sched = parse_schedule(schedule)
    bindings = {"timestep": list(sched.timesteps)}
    original = onnx_io.load(e.model_path)
    original_bytes = moe.weight_bytes(original)
    t0 = time.perf_counter()
    specs = moe.specializations(original, bindings, {k: v.shape for k, v in feeds.items()})
    plan_s = time.perf_counter() - t0
    unspec = optimize(original.copy(), target)
    s_unspec = session(unspec, threads)
    unspec_pipeline = target.default_pipeline
    try:
        s_unspec.run(None, feeds_for(feeds, {"timestep": sched.timesteps[0]}))
    except Exception as exc:  # a cleanup bug must not hide the comparison: fall back to the raw graph
        unspec_pipeline = f"none (the ort pipeline's output fails in ORT: {str(exc).splitlines()[0][:200]})"
        print(f"  unspecialized graph after the ort pipeline fails in ORT; timing the raw graph", flush=True)
        unspec = original
        s_unspec = session(unspec, threads)
    engines, total_spec, total_unspec = [], 0.0, 0.0
    # time the engines serving the most steps (they differ only in which experts they keep)
    timed = set(sorted(range(len(specs)), key=lambda i: -len(specs[i].route.positions))[:max_timed])
    for i, s in enumerate(specs):
        if i not in timed:
            engines.append({"engine": i, "decisions": s.route.decisions, "steps": len(s.route.positions),
                            "weight_bytes": moe.weight_bytes(s.graph),
                            "weight_fraction": round(moe.weight_bytes(s.graph) / original_bytes, 4),
                            "timed": False, "note": "weights before the ort pipeline"})
            continue
        g = optimize(s.graph, target)
        sess = session(g, threads)
        step = s.route.positions[0]
        f = feeds_for(feeds, {"timestep": sched.timesteps[step]})
        want = s_unspec.run(None, f)[0]
        got = sess.run(None, f)[0]
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        spec_ms, unspec_ms = interleaved(lambda: sess.run(None, f), lambda: s_unspec.run(None, f), runs)
        total_spec += spec_ms * len(s.route.positions)
        total_unspec += unspec_ms * len(s.route.positions)
        engines.append({"engine": i, "timed": True, "decisions": s.route.decisions, "steps": len(s.route.positions),
                        "timed_step": step, "timestep": sched.timesteps[step], "nodes": len(g),
                        "weight_bytes": moe.weight_bytes(g), "weight_fraction": round(moe.weight_bytes(g) / original_bytes, 4),
                        "median_ms": round(spec_ms, 3), "unspecialized_median_ms": round(unspec_ms, 3),
                        "speedup": round(unspec_ms / spec_ms, 3), "max_rel_vs_unspecialized": rel})
        print(f"  {name} engine {i} ({len(s.route.positions)} steps): {moe.weight_bytes(g):,} B "
              f"({moe.weight_bytes(g) / original_bytes:.1%} of {original_bytes:,}), {spec_ms:.2f} ms vs "
              f"{unspec_ms:.2f} ms unspecialized (x{unspec_ms / spec_ms:.2f}), rel {rel:.2g}", flush=True)
    timed_steps = sum(e["steps"] for e in engines if e["timed"])
    return {"model": name, "schedule": sched.to_json(), "weight_bytes_original": original_bytes,
            "timed_steps": timed_steps,
            "unspecialized_nodes": len(unspec), "unspecialized_pipeline": unspec_pipeline,
            "engine_pipeline": target.default_pipeline, "plan_seconds": round(plan_s, 3), "engines": engines,
            "timed_steps_total_ms": round(total_spec, 2), "timed_steps_total_unspecialized_ms": round(total_unspec, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="wan22-moe:tiny,moe-dit-trouter:tiny")
    ap.add_argument("--schedule", default="wan22-t2v")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--max-timed", type=int, default=4, help="engines timed per model (most steps first)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (1: these 2 shared cores are busy; 2 made timings noisy)")
    args = ap.parse_args(argv)
    results = []
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        results.append(bench_model(name.strip(), args.schedule, args.runs, args.threads, args.max_timed))
        path = write_result("moe", {"runs": args.runs, "threads": args.threads, "results": results})  # per model
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

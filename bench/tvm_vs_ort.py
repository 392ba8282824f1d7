"""ONNX Runtime CPU vs TVM llvm (naive, vidcc default schedules, tuned) on zoo SVD UNets.

    python bench/tvm_vs_ort.py --models svd-unet:tiny,svd-unet:small --budget 6m --runs 7

Per model: `ort` and `tvm-llvm` are compiled with vidcc (their default pipelines, verified against the
ORT fp32 reference); "tvm-naive" is TVM's own relax pipeline on the same imported graph (legalize +
fuse, no schedules: what DESIGN.md §10 measured 20-28x behind ORT); "tvm-tuned" is tvm-llvm after
`vidcc tune --budget B`. Runs are interleaved (one of each backend per round) so load from other
processes on the machine hits every backend alike; medians over `--runs` rounds after warm-up.
The tuning database lives in a bench-private cache dir, so "tvm-llvm" really is untuned.
Writes bench/results/tvm_vs_ort.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_result  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="svd-unet:tiny,svd-unet:small")
    p.add_argument("--budget", default="6m", help="tuning budget per model (vidcc tune --budget)")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--no-naive", action="store_true", help="skip TVM's naive pipeline (slow to run)")
    p.add_argument("--cache-dir", default=None, help="vidcc cache for this bench (default: a fresh temp dir)")
    return p.parse_args()


def naive_runner(model_path: Path, feeds: dict):
    """TVM's own pipeline on vidcc's import of the same graph: no schedules, no fast math."""
    import tvm
    from tvm import relax

    from vidcc.targets.tvm import TARGETS, import_relax

    target = tvm.target.Target(TARGETS[0].target_json())
    mod, _, order = import_relax(model_path, feeds)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in order]
    return lambda: vm["main"](*args)


def interleaved(fns: dict, runs: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "runs": len(v),
                "samples_ms": [round(x, 3) for x in v]} for k, v in samples.items()}


def bench_model(name: str, budget_s: float, runs: int, naive: bool) -> dict:
    from vidcc.compile import compile_model, tune_model

    log = lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    ort = compile_model(name, "ort")
    log(f"ort compiled ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    untuned = compile_model(name, "tvm-llvm")
    compile_s = time.perf_counter() - t0
    log(f"tvm-llvm compiled ({compile_s:.0f} s)")
    feeds = ort.artifact.sample_inputs()
    fns = {"ort": _runner(ort, feeds), "tvm-llvm": _runner(untuned, feeds)}
    if naive:
        fns["tvm-naive"] = naive_runner(untuned.artifact.path / "model.onnx", feeds)
        log("tvm-naive compiled")
    before = interleaved(fns, runs)
    log("timed untuned: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in before.items()))
    report = None
    if budget_s > 0:
        report = tune_model(name, "tvm-llvm", budget_s, status=log)
        tuned = compile_model(name, "tvm-llvm")
        assert tuned.verdict.passed, tuned.verdict.failures
        fns = {"ort": fns["ort"], "tvm-llvm": fns["tvm-llvm"], "tvm-tuned": _runner(tuned, feeds)}
        after = interleaved(fns, runs)
        log("timed tuned: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in after.items()))
    else:
        after = {}
    ort_ms = before["ort"]["median_ms"]
    result = {"model": name, "inputs": {k: list(v.shape) for k, v in feeds.items()},
              "nodes": {"original": ort.manifest["graph"]["nodes_before"], "ort": ort.manifest["graph"]["nodes_after"],
                        "tvm": untuned.manifest["graph"]["nodes_after"]},
              "tvm_compile_s": round(compile_s, 1), "untuned": before, "tuned": after,
              "ratio_to_ort": {k: round(v["median_ms"] / ort_ms, 3) for k, v in before.items()},
              "verification": {"ort": ort.verdict.to_json(), "tvm-llvm": untuned.verdict.to_json()}}
    if after:
        result["ratio_to_ort_after_tuning"] = {k: round(v["median_ms"] / after["ort"]["median_ms"], 3)
                                               for k, v in after.items()}
        result["tuning"] = {k: report[k] for k in ("budget_s", "seconds", "tasks_total", "tasks_tuned", "cost_model",
                                                   "model_ms_before", "model_ms_after")}
        result["tuning"]["tasks"] = report["tasks"]
    return result


def _runner(result, feeds):
    runner = result.artifact.runner()
    return lambda: runner.run(feeds)


def main():
    args = parse_args()
    from vidcc.cli.tune import parse_budget

    cache = args.cache_dir or tempfile.mkdtemp(prefix="vidcc-bench-")
    os.environ["VIDCC_CACHE_DIR"] = cache  # private tuning database: "tvm-llvm" is untuned
    budget = parse_budget(args.budget) if args.budget not in ("0", "none") else 0.0
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(bench_model(name, budget, args.runs, not args.no_naive))
        path = write_result("tvm_vs_ort", {"tuning_budget_s_per_model": budget, "runs": args.runs,
                                           "cache_dir": cache, "results": results})
    print(path)


if __name__ == "__main__":
    main()

"""Export a full-size zoo model with external data and check ONNX Runtime can load it.

    python bench/zoo_full_export.py [--spec svd-unet:full] [--exporter legacy] [--force]

Not a test: svd-unet:full is 1.52 B parameters (6.1 GB of fp32 weights); expect minutes and ~15 GB of
peak memory. Records export time, the time to create an ORT CPU InferenceSession, parameter count,
file sizes and peak RSS in bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="svd-unet:full")
    parser.add_argument("--exporter", default=None, help="legacy or dynamo (default: the entry's)")
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="default: the user cache ($VIDCC_CACHE_DIR)")
    parser.add_argument("--force", action="store_true", help="re-export even if cached")
    parser.add_argument("--name", default="zoo_full_export", help="result file name under bench/results/")
    args = parser.parse_args()

    from vidcc import zoo

    start = time.perf_counter()
    exp = zoo.export(args.spec, exporter=args.exporter, opset=args.opset, cache_dir=args.cache_dir,
                     force=args.force, progress=lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}",
                                                                  flush=True))
    export_s = time.perf_counter() - start
    rss_after_export = peak_rss_gib()
    gc.collect()
    print(f"exported to {exp.directory} ({'cached' if exp.cached else f'{export_s:.1f} s'})", flush=True)

    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(str(exp.model_path), providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - start
    io = {"inputs": {i.name: i.shape for i in session.get_inputs()},
          "outputs": {o.name: o.shape for o in session.get_outputs()}}
    del session
    print(f"ORT InferenceSession created in {session_s:.1f} s", flush=True)

    meta = exp.meta
    files = {p.name: p.stat().st_size for p in sorted(exp.directory.iterdir()) if p.is_file()}
    path = write_result(args.name, {
        "spec": exp.spec, "exporter": exp.exporter, "opset": exp.opset, "cached": exp.cached,
        "params": meta.get("params"), "nodes": meta.get("nodes"), "external_data": exp.data_path is not None,
        "bytes": files, "weight_bytes": files.get("model.onnx.data"),
        "export_wall_s": round(export_s, 1), "export_timings_s": {k: round(v, 1) for k, v in meta.get("timings", {}).items()},
        "ort_session_s": round(session_s, 1), "ort_io": io,
        "peak_rss_gib": {"after_export": round(rss_after_export, 2), "after_ort_load": round(peak_rss_gib(), 2)},
        "sample_inputs": meta.get("inputs"),
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

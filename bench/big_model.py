"""Big models through vidcc: the default CPU pipeline on svd-unet:full (1.52 B params, external data),
with wall time and peak RSS of the process that runs it (goal: peak RSS <= 1.5x the weight bytes;
weights are memory-mapped and a pass that does not change a weight never copies it).

    python bench/big_model.py [--model svd-unet:full] [--target ort]

The pipeline runs in a child process (`vidcc opt`), so its peak RSS is its own."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="svd-unet:full")
    parser.add_argument("--target", default="ort", help="whose default pipeline to run")
    args = parser.parse_args()
    from vidcc import model as models
    from vidcc import plugins

    source = models.resolve(args.model)  # exports (and caches) the model first, outside the measurement
    data = source.path.with_name(source.path.name + ".data")
    weight_bytes = data.stat().st_size if data.exists() else source.path.stat().st_size
    spec = plugins.registry().targets[args.target].obj.default_pipeline
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opt.onnx"
        cmd = [sys.executable, "-m", "vidcc.cli", "opt", str(source.path), "-p", spec, "-o", str(out), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
    result = {"model": args.model, "pipeline": spec, "wall_s": round(wall, 1), "peak_rss_gib": round(peak / 2**30, 2),
              "weight_gib": round(weight_bytes / 2**30, 2), "rss_over_weights": round(peak / weight_bytes, 2),
              "output_gib": round(out_bytes / 2**30, 2)}
    print(result)
    write_result(f"big_model-{args.model.replace(':', '-')}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

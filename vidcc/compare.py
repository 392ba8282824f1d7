"""`vidcc compare`: one model, several targets, measured side by side.

Each target is compiled through the same path as `vidcc compile` (its own default pipeline plus the
user's spec, content-hash cached), then measured in a child process of its own, so that its peak
host RSS is its own and a crashing backend cannot take the others down. Errors are against the ORT fp32 reference of the original graph (vidcc/verification.py); timing
uses vidcc/measure.py like the bench scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vidcc import verification as V
from vidcc.errors import VidccError


@dataclass
class TargetRow:
    target: str
    available: bool
    reason: str = ""
    hint: str = ""
    build_s: float | None = None
    cached: bool | None = None
    latency_median_ms: float | None = None
    latency_p90_ms: float | None = None
    runs: int | None = None
    peak_rss_mib: float | None = None
    peak_device_mib: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    psnr_db: float | None = None
    verified: bool | None = None
    artifact_mib: float | None = None
    artifact: str | None = None
    nodes: int | None = None
    error: str | None = None
    timing_samples_ms: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) and k != "psnr_db" else v)
                for k, v in asdict(self).items()}


def compare(model: str, targets: list[str], *, pipeline: str = "", inputs: dict[str, np.ndarray] | None = None,
            repeat: int = 10, warmup: int = 2, use_cache: bool = True, reference: dict[str, np.ndarray] | None = None,
            static_shapes: bool = False,
            progress: Callable[[str, str], None] = lambda target, message: None) -> dict[str, Any]:
    """Compile and measure each target; returns {"model", "inputs", "rows": [TargetRow.to_json()]}."""
    from vidcc import model as models
    from vidcc.compile import compile_model, get_target

    if not targets:
        raise VidccError("no targets given (e.g. --targets ort,tvm-llvm)")
    resolved = [get_target(t) for t in targets]  # unknown names fail before any work
    source = models.resolve(model)
    feeds = inputs if inputs is not None else source.sample_inputs()
    if feeds is None:
        feeds = V.random_feeds(V.input_signature(source.path))
    if reference is None:
        reference = V.reference_outputs(source.path, feeds)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidcc-compare-") as work:
        feeds_path = Path(work) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        for target in resolved:
            row = TargetRow(target.name, True)
            why = target.available()
            if not why:
                row.available, row.reason, row.hint = False, why.reason, why.hint
                rows.append(row.to_json())
                progress(target.name, "unavailable")
                continue
            try:
                progress(target.name, "compiling")
                t0 = time.perf_counter()
                result = compile_model(model, target.name, pipeline=pipeline, inputs=feeds, use_cache=use_cache,
                                       reference=reference, static_shapes=static_shapes, status=lambda message, t=target.name: progress(t, message))
                row.build_s = round(result.artifact.manifest["build"].get("seconds", time.perf_counter() - t0), 3)
                row.cached, row.verified = result.cached, result.verdict.passed
                row.artifact = str(result.artifact.path)
                row.nodes = result.artifact.manifest["graph"]["nodes_after"]
                row.artifact_mib = round(sum(f.stat().st_size for f in result.artifact.path.rglob("*") if f.is_file()) / 2**20, 3)
                progress(target.name, f"measuring ({repeat} runs)")
                measured = _measure_in_child(result.artifact.path, feeds_path, Path(work) / f"{target.name}.npz",
                                             repeat=repeat, warmup=warmup)
                row.latency_median_ms, row.latency_p90_ms = measured["median_ms"], measured["p90_ms"]
                row.runs, row.timing_samples_ms = measured["runs"], measured["samples_ms"]
                row.peak_rss_mib, row.peak_device_mib = measured["peak_rss_mib"], measured.get("peak_device_mib")
                with np.load(Path(work) / f"{target.name}.npz") as data:
                    outputs = {k: data[k] for k in data.files}
                worst = _worst(V.compare_outputs(outputs, reference))
                row.max_abs, row.max_rel, row.cosine, row.psnr_db = worst
            except VidccError as exc:
                row.error = str(exc)
            rows.append(row.to_json())
            progress(target.name, "done" if row.error is None else "failed")
    return {"model": model, "model_path": str(source.path), "pipeline": pipeline,
            "inputs": {k: [list(v.shape), v.dtype.name] for k, v in feeds.items()},
            "repeat": repeat, "warmup": warmup, "rows": rows}


def _worst(per_output: dict[str, V.OutputMetrics]) -> tuple[float, float, float, float]:
    ms = list(per_output.values())
    return (max(m.max_abs for m in ms), max(m.max_rel for m in ms), min(m.cosine for m in ms), min(m.psnr_db for m in ms))


def _measure_in_child(artifact: Path, feeds: Path, out: Path, *, repeat: int, warmup: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vidcc.compare", str(artifact), str(feeds), str(out), str(repeat), str(warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    # The child reports its own peak RSS (RUSAGE_SELF just before it exits): RUSAGE_CHILDREN would
    # mix every target measured so far.
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise VidccError(f"measuring {artifact.name} failed: {last}")
    return json.loads(stdout.strip().splitlines()[-1])


def _child(artifact_dir: str, feeds_path: str, out_path: str, repeat: str, warmup: str) -> int:
    """Child process: load the artifact, time it, write its outputs, print one JSON line."""
    import resource

    from vidcc.artifact import Artifact
    from vidcc.measure import time_fn

    runner = Artifact.open(artifact_dir).runner()
    with np.load(feeds_path) as data:
        feeds = {k: data[k] for k in data.files}
    outputs = runner.run(feeds)
    timing = time_fn(lambda: runner.run(feeds), runs=int(repeat), warmup=int(warmup))
    np.savez(out_path, **outputs)
    result = {"median_ms": timing.median_ms, "p90_ms": timing.p90_ms, "runs": timing.runs,
              "samples_ms": timing.samples_ms,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "peak_device_mib": _device_peak_mib()}
    print(json.dumps(result))
    return 0


def _device_peak_mib() -> float | None:
    """GPU memory this process holds, from nvidia-smi (None without a GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def plot_svg(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Latency against error (1 - cosine, log scale), one labelled point per measured target."""
    pts = [(r["target"], r["latency_median_ms"], max(1.0 - r["cosine"], 1e-12)) for r in rows
           if r.get("latency_median_ms") is not None and r.get("cosine") is not None]
    if not pts:
        raise VidccError("nothing to plot: no target was measured")
    w, h, m = 640, 400, 60
    xs = [p[1] for p in pts]
    ys = [np.log10(p[2]) for p in pts]
    x0, x1 = 0.0, max(xs) * 1.15
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5

    def sx(x):
        return m + (x - x0) / (x1 - x0) * (w - 2 * m)

    def sy(y):
        return h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{_esc(title)}</text>',
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
             f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">latency, median ms</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">1 - cosine vs ORT fp32 (log10)</text>']
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv)}" y="{h - m + 15}" text-anchor="middle">{xv:.3g}</text>')
        parts.append(f'<text x="{m - 5}" y="{sy(yv) + 4}" text-anchor="end">{yv:.1f}</text>')
    for (name, x, _), y in zip(pts, ys):
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="#3366cc"/>')
        parts.append(f'<text x="{sx(x) + 8:.1f}" y="{sy(y) - 8:.1f}">{_esc(name)}</text>')
    parts.append("</svg>")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, path)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:6]))

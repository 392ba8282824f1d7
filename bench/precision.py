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
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._results import write_result  # noqa: E402

GATES = {"fp16": 0.999, "bf16": 0.995}


def _casts(graph) -> int:
    return len(graph.nodes_by_op("Cast"))


def _tvm_cosine(graph_or_proto, feeds, reference) -> tuple[float | None, str | None, float]:
    from vidcc.halfrun import min_cosine, run_tvm_llvm

    t0 = time.perf_counter()
    try:
        return min_cosine(run_tvm_llvm(graph_or_proto, feeds), reference), None, time.perf_counter() - t0
    except Exception as exc:  # a graph TVM refuses is a result, not a crash of the bench
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return None, msg, time.perf_counter() - t0


def drop_generated_dims(graph) -> int:
    """Forget shape inference's generated dim names (unk__N). After `cleanup` the same unk__N can name
    different sizes in different tensors (inference ran more than once), and ONNX Runtime's memory
    planner trusts equal names: it then fails with 'Shape mismatch attempting to re-use buffer'."""
    from vidcc.ir import TensorType

    dropped = 0
    for name, t in list(graph.types.items()):
        if t.shape and any(isinstance(d, str) and d.startswith("unk__") for d in t.shape):
            graph.types[name] = TensorType(t.dtype, tuple(None if isinstance(d, str) and d.startswith("unk__") else d
                                                          for d in t.shape))
            dropped += 1
    return dropped


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


def bench_model(spec: str, dtypes: list[str], log) -> dict:
    from vidcc import onnx_io, zoo
    from vidcc.halfrun import min_cosine, run_ort
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.precision_debug import NAIVE

    t0 = time.perf_counter()
    exp = zoo.export(spec)
    with np.load(exp.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    graph = onnx_io.load(exp.model_path)
    row: dict = {"model": spec, "exporter": exp.exporter, "opset": exp.opset, "nodes_raw": len(graph)}
    prep, target = prepare_spec(graph, feeds)
    run_pipeline(graph, prep, PassContext(target=target, calibration=[feeds]))
    row["prepare"] = prep
    row["nodes"] = len(graph)
    row["ops"] = {op: n for op, n in graph.op_histogram().most_common(12)}
    row["generated_dims_dropped"] = drop_generated_dims(graph)
    row["casts_fp32_graph"] = base = _casts(graph)
    reference = run_ort(graph, feeds)
    raw_ref = run_ort(exp.model_path, feeds)
    row["cleanup_cosine_vs_raw"] = min_cosine(reference, raw_ref)
    row["export_seconds"] = round(time.perf_counter() - t0, 1)
    for dtype in dtypes:
        entry: dict = {}
        extra = ",keep_extra=[LayerNormalization]" if dtype == "bf16" else ""
        g = graph.copy()
        ctx = PassContext(calibration=[feeds])
        t1 = time.perf_counter()
        run_pipeline(g, f"tag-precision{{dtype={dtype}{extra}}},materialize-precision", ctx)
        tag, mat = ctx.log[0].stats, ctx.log[1].stats
        entry["vidcc"] = {"spec": f"tag-precision{{dtype={dtype}{extra}}},materialize-precision",
                          "pass_seconds": round(time.perf_counter() - t1, 2),
                          "casts_inserted": mat.get("casts_inserted"), "casts_added": _casts(g) - base,
                          "tags": {k: v for k, v in tag.items() if k not in ("dtype",)},
                          "opset_raised_to": mat.get("opset_raised_to")}
        if dtype == "fp16":
            entry["vidcc"]["ort_cpu_cosine_upcast"] = min_cosine(run_ort(g, feeds), reference)
        cos, err, secs = _tvm_cosine(onnx_io.to_proto(g), feeds, reference)
        entry["vidcc"].update({"tvm_llvm_cosine": cos, "tvm_error": err, "tvm_seconds": round(secs, 1),
                               "gate": GATES[dtype], "passes_gate": cos is not None and cos >= GATES[dtype]})
        log(f"  {dtype} vidcc: cosine {cos} casts +{entry['vidcc']['casts_added']} {err or ''}")
        # naive conversion of the same graph
        try:
            if dtype == "fp16":
                proto = naive_fp16(graph)
                how = "onnxconverter-common float16.convert_float_to_float16(keep_io_types=True)"
                n_casts = sum(1 for n in proto.graph.node if n.op_type == "Cast") - base
            else:
                gn = graph.copy()
                run_pipeline(gn, f"tag-precision{{dtype=bf16,{NAIVE}}},materialize-precision", PassContext())
                proto, how, n_casts = onnx_io.to_proto(gn), "every float node bf16 (tag-precision, rules off)", _casts(gn) - base
            cos, err, secs = _tvm_cosine(proto, feeds, reference)
            entry["naive"] = {"how": how, "casts_added": n_casts, "tvm_llvm_cosine": cos, "tvm_error": err,
                              "tvm_seconds": round(secs, 1)}
        except Exception as exc:
            entry["naive"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        log(f"  {dtype} naive: cosine {entry['naive'].get('tvm_llvm_cosine')} casts +{entry['naive'].get('casts_added')} "
            f"{entry['naive'].get('tvm_error') or entry['naive'].get('error') or ''}")
        row[dtype] = entry
    return row


def main() -> int:
    from vidcc.zoo import ENTRIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ENTRIES), help="zoo entries, comma-separated")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--name", default="precision", help="result file name under bench/results/")
    args = parser.parse_args()
    rows, start = [], time.time()
    for size in args.sizes.split(","):
        for model in args.models.split(","):
            spec = f"{model}:{size}"
            print(spec, flush=True)
            try:
                rows.append(bench_model(spec, args.dtypes.split(","), lambda s: print(s, flush=True)))
            except Exception as exc:
                traceback.print_exc()
                rows.append({"model": spec, "error": f"{type(exc).__name__}: {exc}"[:500]})
    path = write_result(args.name, {
        "runtime": "TVM Relax 0.27 LLVM CPU (fp16 computed in half; bf16 legalized to fp32 math rounded to bf16 "
                   "per op); reference: the cleaned fp32 graph on ONNX Runtime CPU",
        "gates": GATES, "rows": rows, "seconds": round(time.time() - start, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

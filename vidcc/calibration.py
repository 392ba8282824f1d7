"""Activation ranges from an fp32 run: the largest |value| of every float32 tensor.

Exposing every intermediate tensor as a graph output would hold all activations at once (gigabytes
for a video UNet). Instead each tensor gets an Abs -> ReduceMax(keepdims=0) pair in a probe copy of
the graph, so ONNX Runtime returns one scalar per tensor and frees the activations as usual.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto as T

from vidcc.ir import Graph, TensorType


def float_tensors(graph: Graph) -> list[str]:
    """Float32 tensors computed at run time: graph inputs and node outputs (not constants)."""
    names = [n for n in graph.inputs if graph.type_of(n).dtype == T.FLOAT]
    for node in graph.toposort():
        names += [o for o in node.outputs if o and graph.type_of(o).dtype == T.FLOAT]
    return names


def _probe(graph: Graph, tensors: list[str]) -> tuple[Graph, dict[str, str]]:
    g = graph.copy()
    g.io_meta = {k: v for k, v in graph.io_meta.items() if k in graph.inputs}
    g.outputs = []
    out_of: dict[str, str] = {}
    for i, t in enumerate(tensors):
        a = g.add_node("Abs", [t], [g.unique_name(f"__amax_abs_{i}")], name=f"__amax_abs_{i}",
                       types=[g.type_of(t)])
        r = g.add_node("ReduceMax", [a.outputs[0]], [g.unique_name(f"__amax_{i}")], name=f"__amax_{i}",
                       attrs={"keepdims": 0}, types=[TensorType(T.FLOAT, ())])
        g.outputs.append(r.outputs[0])
        out_of[r.outputs[0]] = t
    return g, out_of


def amax(graph: Graph, feeds: list[dict[str, np.ndarray]], *, threads: int = 0) -> dict[str, float]:
    """max |x| over all feeds for every float32 tensor of the graph (NaN counts as inf). Runs on the
    CUDA EP (fp32, TF32 off) where there is one: a full-size video UNet at its real shape is tens of
    TFLOP, minutes on a CPU; threads=0 lets ORT use every core otherwise."""
    import onnxruntime as ort

    from vidcc import onnx_io

    tensors = float_tensors(graph)
    if not tensors or not feeds:
        return {}
    probe, out_of = _probe(graph, tensors)
    result = {t: 0.0 for t in tensors}
    with tempfile.TemporaryDirectory(prefix="vidcc-calib-") as tmp:
        path = onnx_io.save(probe, Path(tmp) / "probe.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # ORT's default order runs the probes last, keeping every activation alive until then
        # (svd-unet:small at 8x32x32: 3.4 GiB peak RSS, 0.69 GiB priority-based; full size ran out of 128 GiB)
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            from vidcc.targets._cuda import why_no_gpu

            if why_no_gpu() is None:
                providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
        try:
            _run_probes(ort.InferenceSession(str(path), so, providers=providers), feeds, out_of, result)
        except Exception:  # e.g. the GPU's memory, held by whoever calibrates: the CPU always can
            if providers == ["CPUExecutionProvider"]:
                raise
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            _run_probes(sess, feeds, out_of, result)
    return result


def _run_probes(sess, feeds, out_of: dict[str, str], result: dict[str, float]) -> None:
    wanted = {i.name: i for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        f = {k: np.asarray(v).astype(_np_type(wanted[k].type)) for k, v in feed.items() if k in wanted}
        for name, value in zip(names, sess.run(None, f)):
            v = float(value)
            v = float("inf") if np.isnan(v) else v
            t = out_of[name]
            result[t] = max(result[t], v)


def _np_type(ort_type: str):
    from vidcc.verification import ORT_NP

    return ORT_NP.get(ort_type, np.float32)


def synthetic_feeds(graph: Graph, seed: int = 0) -> list[dict[str, np.ndarray]] | None:
    """One feed of N(0,1) floats / zero integers when every input has a static shape, else None."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name in graph.inputs:
        if name in graph.constants:
            continue
        t = graph.type_of(name)
        if t.shape is None or not all(isinstance(d, int) for d in t.shape) or not t.dtype:
            return None
        if t.dtype in (T.FLOAT, T.FLOAT16, T.DOUBLE, T.BFLOAT16):
            feed[name] = rng.standard_normal(t.shape).astype(np.float32)
        else:
            feed[name] = np.zeros(t.shape, dtype=t.np_dtype)
    return [feed]

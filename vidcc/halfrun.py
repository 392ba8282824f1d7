"""Runtimes that judge reduced-precision numerics: they must really compute in half.

ONNX Runtime's CPU EP upcasts fp16 nodes to fp32 (and has no bf16 kernels), so it cannot say whether a
fp16 graph is accurate. TVM's LLVM backend keeps fp16 arithmetic in half (each op rounds to half) and
legalizes bf16 to fp32 compute rounded to bf16 after every op. Reductions accumulate in the tensor's
dtype unless widened: MatMul/Conv accumulate in fp32 by default (`accumulate="fp32"`), as cuBLAS, cuDNN
and TensorRT do on the GPU; `accumulate="low"` is the stricter judge (bf16 convs summed in bf16 cost
svd-unet:small 0.9928 cosine, fp32 accumulation 0.9998). `run_tvm_llvm` builds a graph with TVM Relax and
runs it; `run_ort` is the fp32 reference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from vidcc.ir import Graph

RUNTIMES = {
    "tvm-llvm": "TVM Relax, LLVM CPU: computes fp16 in half, bf16 rounded to bf16 after every op; "
                "MatMul/Conv accumulate in fp32 (as GPU libraries do)",
    "ort": "ONNX Runtime CPU: fp32 reference (upcasts fp16 internally, no bf16 kernels)",
}


def _model_proto(graph: Graph | onnx.ModelProto | str | Path, tmp: Path) -> onnx.ModelProto | str:
    """A path (for graphs with external data) or a ModelProto."""
    if isinstance(graph, Graph):
        from vidcc import onnx_io

        return str(onnx_io.save(graph, tmp / "model.onnx"))
    return graph if isinstance(graph, onnx.ModelProto) else str(graph)


def run_ort(graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="vidcc-ort-") as tmp:
        src = _model_proto(graph, Path(tmp))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(src.SerializeToString() if isinstance(src, onnx.ModelProto) else src,
                                    so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted})))


class TVMModule:
    """A graph built with TVM Relax for LLVM; call with feeds (numpy, cast to the inputs' dtypes)."""

    def __init__(self, graph, *, num_cores: int = 2, accumulate: str = "fp32"):
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        with tempfile.TemporaryDirectory(prefix="vidcc-tvm-") as tmp:
            src = _model_proto(graph, Path(tmp))
            model = src if isinstance(src, onnx.ModelProto) else onnx.load(src)
        self.input_names = [i.name for i in model.graph.input
                            if i.name not in {t.name for t in model.graph.initializer}]
        self.output_names = [o.name for o in model.graph.output]
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        mod = from_onnx(model, opset=opset, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        if accumulate == "fp32":
            from vidcc.targets._tvm_accumulate import fp32_accumulation

            mod = fp32_accumulation(mod)
        target = tvm.target.Target(llvm_target(num_cores))
        self._exe = tvm.compile(mod, target=target)
        self._dev = tvm.cpu()
        self._vm = relax.VirtualMachine(self._exe, self._dev)
        self._dtypes = {}
        for i in model.graph.input:
            if i.name in self.input_names:
                self._dtypes[i.name] = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(feeds[n]).astype(self._dtypes[n])), self._dev)
                for n in self.input_names]
        out = self._vm["main"](*args)
        outs = list(out) if not hasattr(out, "numpy") else [out]
        return {name: _to_numpy(o) for name, o in zip(self.output_names, outs)}


def llvm_target(num_cores: int = 2) -> dict:
    """The host's CPU level, as the tvm-llvm targets use it. Generic x86-64 has no F16C, so LLVM
    converts every half value in software: moe-dit:small in fp16 ran 12x slower than in fp32 (407 s vs
    34 s, all in matmuls); with F16C half is as fast as fp32. Each op still rounds to half (bf16 outputs
    were bit-identical; svd-unet:tiny fp16 differed by <= 0.013, cosine 0.999966 vs 0.999965)."""
    from vidcc.targets.tvm import llvm_json

    return llvm_json(num_cores)


def _to_numpy(value) -> np.ndarray:
    arr = value.numpy()
    return arr


def run_tvm_llvm(graph, feeds: dict[str, np.ndarray], accumulate: str = "fp32") -> dict[str, np.ndarray]:
    return TVMModule(graph, accumulate=accumulate)(feeds)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, computed in float64; NaN/Inf make it -1 (a failure)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return -1.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def min_cosine(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """The worst cosine over the outputs both dicts share."""
    shared = [k for k in reference if k in outputs]
    if not shared:
        raise ValueError("no output in common with the reference")
    return min(cosine(outputs[k], reference[k]) for k in shared)

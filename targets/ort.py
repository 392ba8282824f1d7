"""ONNX Runtime targets: `ort` (CPU EP, the reference), `ort-cuda`, `ort-cuda-fp16`, `ort-cuda-bf16` (CUDA EP).

A build checks that a session can be created from the optimized model (so an op the EP lacks fails
at compile time, not at run time) and records the session settings; with the option
`save_optimized=True` it also writes ORT's own optimized model (`ort_optimized.onnx`, specific to this
machine's ORT version and CPU). The runner binds inputs and outputs through IOBinding, so on CUDA the
outputs are only copied back once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcc.errors import TargetError
from vidcc.verification import ORT_NP
from vidcc.target import Availability, BuildContext, Runner, Target

from . import _ort_bf16
from ._pipelines import DEFAULT

MS = "com.microsoft"

# com.microsoft ops that ONNX Runtime 1.31's CPU EP really runs (measured by building and running a
# one-node model of each). Not on CPU: GroupNorm, SkipGroupNorm, BiasAdd, BiasSplitGelu, NhwcConv (CUDA only).
CPU_CONTRIB = ("MultiHeadAttention", "Attention", "FusedMatMul", "FusedConv", "FusedGemm", "BiasGelu", "FastGelu",
               "Gelu", "QuickGelu", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
               "RotaryEmbedding", "MatMulNBits", "Inverse")
# and the CUDA EP's own on top of those
CUDA_CONTRIB = CPU_CONTRIB + ("GroupNorm", "SkipGroupNorm", "BiasAdd", "BiasSplitGelu", "NhwcConv", "GroupQueryAttention")


def _accepted(contrib: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # "*": every standard ONNX op (GroupNormalization-21, Attention-23, RMSNormalization-23 run on CPU);
    # SimplifiedLayerNormalization is ORT's own op in the default domain.
    ops: dict[str, tuple[str, ...]] = {"*": ("",)}
    for op in contrib:
        ops[op] = ("", MS) if op in ("Attention", "Gelu") else (MS,)
    return ops


@dataclass
class OrtTarget(Target):
    provider: str = "CPUExecutionProvider"

    def available(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not importable ({exc})", "pip install onnxruntime")
        if self.provider not in ort.get_available_providers():
            return Availability(False, f"this onnxruntime has no {self.provider}",
                                "pip install onnxruntime-gpu (instead of onnxruntime)")
        if self.provider == "CUDAExecutionProvider":
            from ._cuda import why_no_gpu

            why = why_no_gpu()
            if why:
                return Availability(False, why, "run on a machine with an NVIDIA GPU and driver")
        return Availability(True)

    def tool_versions(self) -> dict[str, str]:
        try:
            import onnxruntime as ort

            return {"onnxruntime": ort.__version__}
        except ImportError:
            return {}

    def _settings(self) -> dict[str, Any]:
        settings = {"provider": self.provider, "graph_optimization_level": self.options.get("graph_optimization_level", "all"),
                    "intra_op_num_threads": int(self.options.get("intra_op_num_threads", 0))}
        if self.provider == "CUDAExecutionProvider":
            # The CUDA EP computes fp32 MatMul/Conv in TF32 by default (measured: rel error 1e-3 on an H100);
            # an fp32 target must compute in fp32. cuDNN's heuristic conv algorithm beat the exhaustive
            # search on svd-unet:small (35.8 vs 42.8 ms, H100); arena growth by request, not powers of two.
            # SkipLayerNormalization keeps its statistics in fp32 only in strict mode (else in the input's
            # type: contrib_ops/cuda/bert/skip_layer_norm.cc), as vidcc's precision policy wants of norms.
            settings["cuda_options"] = {"use_tf32": "1" if self.options.get("tf32") else "0",
                                        "cudnn_conv_algo_search": self.options.get("conv_algo_search", "HEURISTIC"),
                                        "arena_extend_strategy": "kSameAsRequested",
                                        "enable_skip_layer_norm_strict_mode":
                                            "1" if self.options.get("skip_layer_norm_strict", True) else "0"}
        return settings

    def build(self, model_path: Path, out_dir: Path, ctx: BuildContext) -> dict[str, Any]:
        settings = self._settings()
        optimized = out_dir / "ort_optimized.onnx" if self.options.get("save_optimized") else None
        ctx.status("creating an ONNX Runtime session")
        session = _session(model_path, settings, optimized)  # fails here if the EP cannot run the graph
        entries = {"settings": settings, "ort_optimized": optimized.name if optimized else None}
        if self.provider == "CUDAExecutionProvider" and self.options.get("cuda_graph", True):
            entries["cuda_graph"] = _cuda_graph_check(model_path, settings, session)
            if entries["cuda_graph"] is True:
                settings["cuda_options"]["enable_cuda_graph"] = "1"
        return entries

    def load(self, artifact_dir: Path, manifest: dict[str, Any]) -> Runner:
        settings = manifest.get("build", {}).get("settings") or self._settings()
        session = _session(Path(artifact_dir) / "model.onnx", settings)
        if settings.get("cuda_options", {}).get("enable_cuda_graph") == "1":
            return CudaGraphRunner(session)
        return OrtRunner(session, settings["provider"])


def _session(model_path: Path, settings: dict[str, Any], optimized_path: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[settings["graph_optimization_level"]]
    if settings.get("intra_op_num_threads"):
        so.intra_op_num_threads = settings["intra_op_num_threads"]
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    providers = [(settings["provider"], settings["cuda_options"]) if "cuda_options" in settings else settings["provider"]]
    providers += ["CPUExecutionProvider"] if settings["provider"] != "CPUExecutionProvider" else []
    try:
        return ort.InferenceSession(str(model_path), so, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"ONNX Runtime ({settings['provider']}) cannot load the model: {first}") from None


def _cuda_graph_check(model_path: Path, settings: dict[str, Any], session) -> bool | str:
    """True when the model can replay as one CUDA graph (ORT captures a whole run: every input and
    output shape static, every node on the CUDA EP), else why not."""
    for arg in list(session.get_inputs()) + list(session.get_outputs()):
        if not all(isinstance(d, int) for d in arg.shape):
            return f"'{arg.name}' has a dynamic shape {arg.shape} (compile with --static-shapes)"
    try:
        _session(model_path, {**settings, "cuda_options": {**settings["cuda_options"], "enable_cuda_graph": "1"}})
    except TargetError as exc:
        return f"ONNX Runtime refused CUDA graph capture: {exc}"
    return True


class CudaGraphRunner(Runner):
    """Replays the run captured as one CUDA graph: inputs are copied into, and outputs read from, the
    device buffers bound at capture (ORT requires fixed addresses), so a run is one graph launch."""

    def __init__(self, session):
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self.specs = {a.name: (tuple(a.shape), ORT_NP[a.type]) for a in session.get_inputs()}
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
                       for name, (shape, dtype) in self.specs.items()}
        self.outputs = {a.name: ort.OrtValue.ortvalue_from_shape_and_type(a.shape, ORT_NP[a.type], "cuda", 0)
                        for a in session.get_outputs()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in self.inputs.items():
            shape, dtype = self.specs[name]
            if np.shape(feeds[name]) != shape:
                raise TargetError(f"input '{name}' has shape {np.shape(feeds[name])}; this artifact runs only {shape}")
            value.update_inplace(np.ascontiguousarray(feeds[name], dtype=dtype))
        self.session.run_with_iobinding(self.binding)
        return {name: value.numpy() for name, value in self.outputs.items()}



class OrtRunner(Runner):
    def __init__(self, session, provider: str):
        self.session = session
        self.device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))


TARGETS = [
    OrtTarget("ort", "ONNX Runtime CPU (the fp32 reference)", DEFAULT["ort"], accepted_ops=_accepted(CPU_CONTRIB)),
    OrtTarget("ort-cuda", "ONNX Runtime CUDA EP, fp32", DEFAULT["ort-cuda"], accepted_ops=_accepted(CUDA_CONTRIB),
              provider="CUDAExecutionProvider"),
    OrtTarget("ort-cuda-fp16", "ONNX Runtime CUDA EP, fp16 compute", DEFAULT["ort-cuda-fp16"],
              accepted_ops=_accepted(CUDA_CONTRIB), precision="fp16", provider="CUDAExecutionProvider"),
    # only the contrib ops with BFloat16 CUDA kernels; ops without one stay fp32 (targets/_ort_bf16.py)
    OrtTarget("ort-cuda-bf16", "ONNX Runtime CUDA EP, bf16 compute", DEFAULT["ort-cuda-bf16"],
              accepted_ops=_accepted(_ort_bf16.CONTRIB), precision="bf16", provider="CUDAExecutionProvider",
              low_kernels={"bf16": _ort_bf16.CUDA_BF16}),
]

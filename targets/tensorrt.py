"""TensorRT targets: `trt-fp32`, `trt-fp16`, `trt-bf16`.

Networks are strongly typed: TensorRT computes in exactly the types the graph says, so precision comes
from vidcc's precision passes (explicit casts in the default pipeline), never from builder flags.
Dynamic frames/height/width get one optimization profile (min/opt/max around the sample shapes,
configurable with the `profile` option); the builder's timing cache persists in the user cache dir.

Works with the `tensorrt` module (TensorRT 10+) and TensorRT-RTX (`tensorrt_rtx`, shipped by the
`tensorrt-rtx-cu13-bindings` wheel). TensorRT-RTX builds engines on Hopper but refuses to run them
there (compute capability 9.0): the build is verified, running reports that plainly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcc.errors import TargetError
from vidcc.target import Availability, BuildContext, Runner, Target

from ._pipelines import DEFAULT

MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
INSTALL_HINT = ("pip install tensorrt (TensorRT 10+, from NVIDIA's index) or "
                "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings")
ENGINE = "model.engine"


def import_trt():
    """The first TensorRT flavour that imports, or None (with the errors seen)."""
    errors = []
    for name in MODULES:
        try:
            return importlib.import_module(name), name
        except Exception as exc:  # ImportError, or a library that fails to load
            errors.append(f"{name}: {type(exc).__name__}")
    return None, "; ".join(errors)


def profile_shapes(graph_inputs: list[tuple[str, list]], feeds: dict[str, np.ndarray],
                   spread: dict[str, tuple[float, float]] | None = None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min/opt/max per input: opt is the sample shape; symbolic dims range from `lo`x to `hi`x of it
    (default 1/2x..2x; frames down to 1), fixed dims stay as they are."""
    spread = spread or {}
    shapes = {}
    for name, dims in graph_inputs:
        opt = tuple(int(d) for d in feeds[name].shape)
        lo, hi = [], []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                lo.append(d)
                hi.append(d)
                continue
            a, b = spread.get(d if isinstance(d, str) else "", (0.5, 2.0))
            lo.append(max(1, int(opt[axis] * a)))
            hi.append(max(opt[axis], int(round(opt[axis] * b))))
        shapes[name] = (tuple(lo), opt, tuple(hi))
    return shapes


@dataclass
class TensorRTTarget(Target):
    def available(self) -> Availability:
        trt, why = import_trt()
        if trt is None:
            return Availability(False, f"TensorRT is not importable ({why})", INSTALL_HINT)
        from ._cuda import why_no_gpu

        gpu = why_no_gpu()
        if gpu:
            return Availability(False, gpu, "TensorRT builds and runs engines on an NVIDIA GPU")
        return Availability(True)

    def tool_versions(self) -> dict[str, str]:
        trt, name = import_trt()
        return {name: getattr(trt, "__version__", "?")} if trt is not None else {}

    # ---- build -------------------------------------------------------------------------------------
    def network(self, trt, builder, logger, model_path: Path):
        """Parse the optimized ONNX into a strongly typed network (errors name the ONNX node)."""
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TargetError(f"{self.name}: TensorRT's ONNX parser refused the graph: "
                              f"{errors[0].splitlines()[0] if errors else 'no error given'}")
        return network, parser

    def build(self, model_path: Path, out_dir: Path, ctx: BuildContext) -> dict[str, Any]:
        import time

        from vidcc.artifact import cache_dir
        from vidcc.verification import input_signature

        trt, flavour = import_trt()
        if trt is None:
            raise TargetError(f"{self.name}: TensorRT is not importable ({flavour}); {INSTALL_HINT}")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        ctx.status("parsing ONNX into a strongly typed TensorRT network")
        network, parser = self.network(trt, builder, logger, model_path)
        config = builder.create_builder_config()
        workspace = int(self.options.get("workspace_gib", 8)) << 30
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        signature = input_signature(model_path)
        inputs = [(name, info["shape"]) for name, info in signature.items()]
        shapes = profile_shapes(inputs, ctx.feeds, self.options.get("profile"))
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        # TensorRT's timing cache persists across builds; TensorRT-RTX has none (its calls are no-ops).
        cache_path = cache_dir() / "tensorrt" / f"timing-{getattr(trt, '__version__', 'x')}.cache"
        if flavour == "tensorrt":
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            timing = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
            config.set_timing_cache(timing, ignore_mismatch=True)
        ctx.status(f"building the engine ({network.num_layers} layers)")
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TargetError(f"{self.name}: TensorRT failed to build an engine (see its log above)")
        build_s = time.perf_counter() - t0
        (out_dir / ENGINE).write_bytes(bytes(serialized))
        if flavour == "tensorrt":
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
            tmp.replace(cache_path)
        return {"engine": ENGINE, "flavour": flavour, "layers": network.num_layers,
                "engine_build_seconds": round(build_s, 3), "engine_bytes": (out_dir / ENGINE).stat().st_size,
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, "strongly_typed": True}

    # ---- run ---------------------------------------------------------------------------------------
    def load(self, artifact_dir: Path, manifest: dict[str, Any]) -> Runner:
        return TensorRTRunner(Path(artifact_dir) / manifest["build"].get("engine", ENGINE), self.name)


class TensorRTRunner(Runner):
    """Runs an engine with torch CUDA tensors as buffers (execute_async_v3 on torch's stream)."""

    def __init__(self, engine_path: Path, target: str):
        trt, flavour = import_trt()
        if trt is None:
            raise TargetError(f"{target}: TensorRT is not importable ({flavour})")
        try:
            import torch
        except ImportError:
            raise TargetError(f"{target}: running engines needs torch with CUDA (pip install torch)") from None
        if not torch.cuda.is_available():
            raise TargetError(f"{target}: torch sees no CUDA device to run the engine on")
        self.trt, self.torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            major, minor = torch.cuda.get_device_capability()
            raise TargetError(f"{target}: {flavour} could not load the engine on this GPU (compute capability "
                              f"{major}.{minor}; TensorRT-RTX does not run engines on Hopper, 9.0)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.input_names = [n for n, i in zip(names, is_input) if i]
        self.output_names = [n for n, i in zip(names, is_input) if not i]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        keep = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TargetError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}


TARGETS = [
    TensorRTTarget("trt-fp32", "TensorRT, strongly typed, fp32", DEFAULT["trt-fp32"], precision="fp32"),
    TensorRTTarget("trt-fp16", "TensorRT, strongly typed; fp16 from vidcc's precision passes", DEFAULT["trt-fp16"],
                   precision="fp16"),
    TensorRTTarget("trt-bf16", "TensorRT, strongly typed; bf16 from vidcc's precision passes", DEFAULT["trt-bf16"],
                   precision="bf16"),
]

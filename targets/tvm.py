"""Apache TVM Relax targets: `tvm-llvm`, `tvm-llvm-fp16` (CPU), `tvm-cuda`, `tvm-cuda-fp16`, `tvm-cuda-bf16`.

Build: the optimized ONNX (input shapes bound to the sample inputs' and shapes folded when the model
has symbolic dims: TVM compiles static shapes only) -> `relax.frontend.onnx.from_onnx` (weights as
constants) -> Relax: legalize and fuse -> records of the tuning database that beat the default
schedule -> default schedules (CPU: targets/_tvm_schedule.py; CUDA: dlight's GPU rules) -> lowering
-> `model.so` in the artifact, run through `relax.VirtualMachine`.

TVM targets are JSON dicts (`{"kind": "llvm", "mcpu": ..., "num-cores": N}`). The wheel's LLVM refuses
`mcpu=native`, so the CPU level is read from /proc/cpuinfo (x86-64-v4 with AVX-512, v3 with AVX2+FMA,
v2, else generic); the vector width it implies sizes the default schedules.

The fp16 variants compute in half (vidcc's precision passes, in their default pipeline, retype the
graph with fp32 I/O); LLVM rounds every op to half, so tvm-llvm-fp16 judges fp16 numerics on a CPU.
tvm-cuda-bf16 computes in bfloat16 the same way, but for the ops TVM legalizes no bf16 kernel for
(`BF16_GAPS`: tag-precision keeps them fp32); `-p tag-precision{dtype=bf16},materialize-precision` on
tvm-llvm runs the same graph on a CPU (LLVM computes bf16 as fp32 rounded to bf16 after each op).
Tuning: `vidcc tune MODEL --target tvm-llvm --budget 20m` (targets/_tvm_tune.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcc.errors import TargetError
from vidcc.target import Availability, BuildContext, KernelTable, Runner, Target

from ._pipelines import DEFAULT

LIBRARY = "model.so"
# ops the TVM ONNX frontend does not import (measured with 0.27): fusions must not emit them
NOT_IMPORTED = ("Attention", "Swish", "SimplifiedLayerNormalization")
# ops TVM 0.27 cannot compute in bf16 (measured on llvm, and legalization is the same for cuda): its
# layer_norm has no bf16 kernel, its `power` takes no bfloat type
BF16_GAPS = KernelTable({("", "LayerNormalization"): None, ("", "Pow"): None}, others=True,
                        source="TVM 0.27 legalizes no bf16 layer_norm or power")


@functools.lru_cache(maxsize=1)
def cpu_features() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_cpu() -> tuple[str | None, int]:
    """(mcpu for LLVM or None for its default, SIMD vector width in bits)."""
    flags = cpu_features()
    if platform.machine().lower() in ("x86_64", "amd64"):
        if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
            return "x86-64-v4", 512
        if {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"} <= flags:
            return "x86-64-v3", 256
        if {"sse4_2", "popcnt", "ssse3"} <= flags:
            return "x86-64-v2", 128
        return "x86-64", 128
    return None, 128  # aarch64 and others: LLVM's default CPU, NEON-sized vectors


def llvm_json(num_cores: int, mcpu: str | None = None) -> dict[str, Any]:
    """TVM's LLVM target for this host: `mcpu` or the detected CPU level (LLVM's default if none)."""
    spec: dict[str, Any] = {"kind": "llvm", "num-cores": num_cores}
    mcpu = mcpu or detect_cpu()[0]
    if mcpu:
        spec["mcpu"] = mcpu
    return spec


@dataclass
class TvmTarget(Target):
    kind: str = "llvm"

    # ---- availability and identity ----
    def available(self) -> Availability:
        try:
            import tvm  # noqa: F401
            from tvm.relax.frontend import onnx as _  # noqa: F401
        except Exception as exc:
            return Availability(False, f"apache-tvm is not importable ({type(exc).__name__}: {exc})",
                                "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0")
        if self.kind == "cuda":
            import tvm

            if not tvm.cuda().exist:
                return Availability(False, "no CUDA device visible to TVM",
                                    "run on a machine with an NVIDIA GPU (and a CUDA-enabled apache-tvm build)")
        return Availability(True)

    def target_json(self) -> dict[str, Any]:
        if self.kind == "cuda":
            import tvm

            major, minor = tvm.cuda().compute_version.split(".")
            return {"kind": "cuda", "arch": f"sm_{major}{minor}", "host": self._llvm_json()}
        return self._llvm_json()

    def _llvm_json(self) -> dict[str, Any]:
        return llvm_json(int(self.options.get("num_cores") or os.cpu_count() or 1), self.options.get("mcpu"))

    def tool_versions(self) -> dict[str, str]:
        from importlib import metadata

        found = {}
        for dist in ("apache-tvm", "apache-tvm-ffi"):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        if found:
            found["tvm-target"] = json.dumps(self.target_json(), sort_keys=True)
            found["tvm-tuning"] = self.database().digest()  # new tuning results must rebuild
        return found

    def database(self):
        from ._tvm_tune import TuningDatabase

        return TuningDatabase.for_target(self.target_json())

    # ---- build ----
    def build(self, model_path: Path, out_dir: Path, ctx: BuildContext) -> dict[str, Any]:
        import tvm

        ctx.status("importing into TVM Relax")
        mod, shapes, order = import_relax(model_path, ctx.feeds)
        target = tvm.target.Target(self.target_json())
        db = self.database()
        ctx.status(f"compiling with TVM ({len(_prim_funcs_after_fusion(mod, target))} fused functions)")
        try:
            ex = tvm.compile(mod, target=target, relax_pipeline=self.relax_pipeline(target, db))
        except Exception as exc:
            raise TargetError(f"TVM failed to compile the graph: {_first_line(exc)}") from None
        ctx.status("exporting the library")
        _export_atomic(ex, out_dir / LIBRARY)
        return {"library": LIBRARY, "tvm_target": self.target_json(), "static_shapes": shapes, "input_order": order,
                "tuning_records_applied": db.applied_count(), "schedules": "vidcc cpu default" if self.kind == "llvm"
                else "dlight gpu default"}

    def relax_pipeline(self, target, db=None):
        """legalize + fuse -> tuned records (where better than the default) -> default schedules -> lower."""
        import tvm
        from tvm import relax
        from tvm.s_tir import dlight as dl

        from ._tvm_schedule import cpu_rules, gpu_rules

        backend = relax.backend.cuda.pipeline if self.kind == "cuda" else relax.backend.cpu_generic.pipeline
        rules = gpu_rules() if self.kind == "cuda" else cpu_rules(detect_cpu()[1])
        legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]

        @tvm.transform.module_pass(opt_level=0, name="vidcc_relax_pipeline")
        def pipeline(mod, _ctx):
            with target:
                first = backend.library_dispatch_passes(target)
                if self.kind == "llvm" and self.options.get("fast_math", True):
                    from ._tvm_fastmath import fast_math

                    first.append(fast_math)
                if self.options.get("fp32_accumulate", True):  # as cuBLAS/cuDNN do
                    from ._tvm_accumulate import fp32_accumulation

                    first.insert(0, fp32_accumulation)
                mod = tvm.transform.Sequential(first + legalize)(mod)
                if db is not None:
                    mod = db.apply(mod, target)
                mod = dl.ApplyDefaultSchedule(*rules)(mod)
                return tvm.transform.Sequential(backend.dataflow_lower_passes(target)
                                                + backend.finalize_passes(target))(mod)

        return pipeline

    def load(self, artifact_dir: Path, manifest: dict[str, Any]) -> Runner:
        import tvm
        from tvm import relax

        build = manifest["build"]
        path = Path(artifact_dir) / build["library"]
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as exc:
            raise TargetError(f"cannot load the TVM library {path}: {_first_line(exc)}") from None
        dev = tvm.cuda() if self.kind == "cuda" else tvm.cpu()
        vm = relax.VirtualMachine(lib, dev)
        return TvmRunner(vm, dev, build["input_order"], build["static_shapes"], manifest["graph"]["outputs"])

    # ---- tuning ----
    def tune(self, model_path: Path, ctx: BuildContext, budget_s: float) -> dict[str, Any]:
        from ._tvm_tune import tune

        return tune(self, model_path, ctx, budget_s)


class TvmRunner(Runner):
    def __init__(self, vm, dev, input_order, static_shapes, output_names):
        self.vm, self.dev = vm, dev
        self.input_names = list(input_order)
        self.static_shapes = {k: list(v) for k, v in static_shapes.items()}
        self.output_names = list(output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        args = []
        for name in self.input_names:
            a = np.ascontiguousarray(feeds[name])
            if list(a.shape) != self.static_shapes[name]:
                raise TargetError(f"TVM artifacts are built for static shapes: input '{name}' must be "
                                  f"{self.static_shapes[name]}, got {list(a.shape)} (recompile with such inputs)")
            args.append(tvm.runtime.tensor(a, self.dev))
        result = self.vm["main"](*args)
        flat = _flatten(result)
        if len(flat) != len(self.output_names):
            raise TargetError(f"the TVM module returned {len(flat)} outputs, the graph has {len(self.output_names)}")
        return {name: t.numpy() for name, t in zip(self.output_names, flat)}


def _flatten(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    out = []
    for item in value:
        out.extend(_flatten(item))
    return out


# ---- import -------------------------------------------------------------------------------------

def import_relax(model_path: Path, feeds: dict[str, np.ndarray]):
    """(Relax IRModule, static input shapes, input order). Symbolic dims are bound to the feeds' shapes
    and shape computations folded with vidcc's own passes first: TVM's importer needs static shapes
    (it refuses e.g. a Reshape whose input shape it cannot know)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    header = onnx.load_model(str(model_path), load_external_data=False)
    inits = {t.name for t in header.graph.initializer}
    order = [i.name for i in header.graph.input if i.name not in inits]
    missing = [n for n in order if n not in feeds]
    if missing:
        raise TargetError(f"TVM needs sample inputs to fix static shapes; missing {', '.join(missing)}")
    shapes = {n: list(feeds[n].shape) for n in order}
    with tempfile.TemporaryDirectory(prefix="vidcc-tvm-") as tmp:
        path = _static_model(model_path, header, shapes, Path(tmp))
        model = onnx.load_model(str(path))
        try:
            mod = from_onnx(model, shape_dict=shapes, dtype_dict={n: feeds[n].dtype.name for n in order},
                            keep_params_in_input=False)
        except Exception as exc:
            raise TargetError(f"TVM's ONNX frontend cannot import the graph: {_first_line(exc)}") from None
    return mod, shapes, order


def _static_model(model_path: Path, header, shapes: dict[str, list[int]], tmp: Path) -> Path:
    def static(vi) -> bool:
        dims = vi.type.tensor_type.shape.dim
        return vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims)

    if all(static(i) for i in header.graph.input if i.name in shapes):
        return model_path
    from vidcc import onnx_io
    from vidcc.pass_manager import PassContext, run_pipeline

    graph = onnx_io.load(model_path)
    binds = ",".join(f'"{n}={"x".join(map(str, s))}"' for n, s in shapes.items() if s)
    run_pipeline(graph, f"infer-shapes{{shapes=[{binds}]}},fold-constants,cse,dce", PassContext())
    path = onnx_io.save(graph, tmp / "static.onnx")
    if graph.nodes_by_op("Shape"):
        path = _gs_fold(path)
    return path


def _gs_fold(path: Path) -> Path:
    """Shape bookkeeping that vidcc's inference could not type (a Reshape whose target is computed
    leaves its output's dims unknown, so nothing after it folds): onnx-graphsurgeon's folding, which
    re-infers and evaluates shape subgraphs with ONNX Runtime, repeated until nothing changes.
    graphsurgeon evaluates every foldable node in one ONNX Runtime CPU run, which fails as a whole where
    one has no CPU kernel (a bf16 graph's Gemm of constants: svd-unet's time_pos_embed); its shape
    folding still applies, and vidcc's fold-constants then evaluates the rest (ONNX's reference
    evaluator where ONNX Runtime has no kernel)."""
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime

    from vidcc import onnx_io
    from vidcc.pass_manager import PassContext, run_pipeline

    onnxruntime.set_default_logger_severity(3)  # its graph-optimizer notes are not the user's business
    out = path.with_name("static-folded.onnx")
    model = onnx.load(str(path))
    for _ in range(4):
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        graph = gs.import_onnx(model)
        before = len(graph.nodes)
        graph.fold_constants(fold_shapes=True, error_ok=True).cleanup().toposort()
        onnx.save_model(gs.export_onnx(graph), str(out))
        folded = onnx_io.load(out)
        run_pipeline(folded, "fold-constants,cse,dce", PassContext())
        onnx_io.save(folded, out)
        model = onnx.load(str(out))
        if len(folded) == before:
            break
    return out


def _prim_funcs_after_fusion(mod, target) -> list:
    return [gv for gv, f in mod.functions_items() if type(f).__name__ == "PrimFunc"]


def _export_atomic(ex, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.so")
    try:
        ex.export_library(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("  File", "Traceback"))]
    return f"{type(exc).__name__}: {lines[-1].strip() if lines else ''}"[:400]


def _accepted() -> dict[str, tuple[str, ...]]:
    ops: dict[str, tuple[str, ...]] = {"*": ("",)}
    for op in NOT_IMPORTED:
        ops[op] = ()
    return ops


def _target(name: str, kind: str, precision: str, description: str) -> TvmTarget:
    return TvmTarget(name, description, DEFAULT[name], accepted_ops=_accepted(), precision=precision, kind=kind,
                     low_kernels={"bf16": BF16_GAPS})  # facts of the backend: every tvm target (and -p) meets them


TARGETS = [
    _target("tvm-llvm", "llvm", "fp32", "Apache TVM Relax on the CPU (LLVM), default schedules + tuning database"),
    _target("tvm-llvm-fp16", "llvm", "fp16", "Apache TVM Relax on the CPU computing in half (judges fp16 numerics)"),
    _target("tvm-cuda", "cuda", "fp32", "Apache TVM Relax on CUDA, dlight default schedules + tuning database"),
    _target("tvm-cuda-fp16", "cuda", "fp16", "Apache TVM Relax on CUDA computing in half"),
    _target("tvm-cuda-bf16", "cuda", "bf16", "Apache TVM Relax on CUDA computing in bfloat16"),
]

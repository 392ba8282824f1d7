"""`compile`: model -> target default pipeline + user spec -> optimized ONNX -> target build ->
verification against the ORT fp32 reference of the original graph -> cached Artifact.

Verification feeds: `inputs` if given, else the model's sample inputs (zoo models and `<model>.inputs.npz`
beside a file), else random feeds from the input types (`verification.random_feeds`: N(0,1) floats,
zero integers, symbolic dims 1, seed 0). They are stored in the artifact as `inputs.npz` together
with the outputs that passed verification (`outputs.npz`), so `vidcc run` can reproduce them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vidcc import artifact as art
from vidcc import verification as V
from vidcc.errors import TargetError, VidccError


@dataclass
class CompileResult:
    artifact: art.Artifact
    cached: bool
    verdict: V.Verdict
    metrics: dict[str, V.OutputMetrics]
    pass_log: list = field(default_factory=list)  # PassRecords
    exported_to: Path | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest


class _StatusInstrument:
    def __init__(self, status):
        self.status = status

    def before_pass(self, pass_, graph, ctx):
        self.status(f"pass {pass_.name} ({len(graph)} nodes)")

    def after_pass(self, *args):
        pass

    def pass_failed(self, *args):
        pass


def get_target(name: str):
    import difflib

    from vidcc import plugins

    reg = plugins.registry()
    entry = reg.targets.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(reg.targets), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(reg.targets))}"
        raise TargetError(f"unknown target '{name}'{hint}")
    return entry.obj


def require_available(target) -> None:
    a = target.available()
    if not a:
        raise TargetError(f"target '{target.name}' is not available here: {a.reason}" + (f" — {a.hint}" if a.hint else ""))


def parse_bindings(items: list[str] | None) -> dict[str, list]:
    """`NAME=V1,V2,...` (repeatable) -> {NAME: [values]}; values become int, float or stay strings."""
    out: dict[str, list] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise VidccError(f"--bind expects NAME=V1,V2,... (got {item!r})")
        if name in out:
            raise VidccError(f"--bind {name} given twice")
        out[name] = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
    return out


def _scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def full_spec(target, user_spec: str) -> str:
    return ",".join(s for s in (target.default_pipeline.strip(), (user_spec or "").strip()) if s)


def optimize_and_build(graph, passes, pass_ctx, target, out_dir: Path, feeds: dict[str, np.ndarray],
                       status: Callable[[str], None]) -> tuple[Path, dict[str, Any], float]:
    """Run the passes, save the optimized model into out_dir and build it: (model path, the target's
    manifest entries, build seconds). Shared by plain and routed (one engine per route) compiles."""
    from vidcc import onnx_io
    from vidcc.ir import verify
    from vidcc.pass_manager import PassManager
    from vidcc.target import BuildContext

    PassManager(passes).run(graph, pass_ctx)
    verify(graph, require_types=False)
    model_path = onnx_io.save(graph, out_dir / "model.onnx")
    status(f"building for {target.name}")
    t0 = time.perf_counter()
    entries = target.build(model_path, out_dir, BuildContext(feeds=feeds, pass_ctx=pass_ctx, work_dir=out_dir,
                                                             status=status)) or {}
    return model_path, entries, time.perf_counter() - t0


def compile_model(model: str, target_name: str, *, pipeline: str = "", bindings: dict[str, list] | None = None,
                  inputs: dict[str, np.ndarray] | None = None, output_dir: str | Path | None = None,
                  use_cache: bool = True, gate: str | None = None, verify_each: bool = False,
                  status: Callable[[str], None] = lambda message: None, schedule: str | None = None,
                  schedule_input: str | None = None, reference: dict[str, np.ndarray] | None = None,
                  static_shapes: bool = False) -> CompileResult:
    """`reference`: outputs to verify against instead of the original graph on ORT CPU (for models too
    big to run there, e.g. a GPU fp32 run); recorded in the manifest. `static_shapes`: specialize the
    graph to the shapes of the verification inputs (every named dimension bound, so shape bookkeeping
    folds away and fusions that need static head sizes apply); the artifact then runs only those shapes."""
    if bindings or schedule:  # routers under static bindings: one engine per route (vidcc/specialize.py)
        from vidcc.specialize import compile_routed

        routed, bindings = compile_routed(model, target_name, pipeline=pipeline, bindings=bindings, schedule=schedule,
                                          schedule_input=schedule_input, inputs=inputs, output_dir=output_dir,
                                          use_cache=use_cache, gate=gate, verify_each=verify_each, status=status)
        if routed is not None and static_shapes:
            raise VidccError("static shapes are not supported for routed (MoE) compiles yet: drop --static-shapes")
        if routed is not None:
            return routed
    from vidcc import model as models
    from vidcc import plugins
    from vidcc.pass_manager import PassContext, PassRecord
    from vidcc.pipeline import build_pipeline

    target = get_target(target_name)
    require_available(target)
    spec = full_spec(target, pipeline)
    passes = build_pipeline(spec)  # spec errors before any loading or building
    reg = plugins.registry()
    status(f"resolving {model}")
    source = models.resolve(model)
    signature = V.input_signature(source.path)
    feeds, feeds_from = V.choose_feeds(source, signature, inputs)
    bindings = bindings or {}
    dims = V.symbolic_dims(signature, feeds) if static_shapes else {}
    gate_obj_requested = gate
    versions = art.tool_versions(target)
    key = art.content_key({
        "model": art.model_digest(source.path), "passes": [(p.spec, reg.plugin_of(type(p))) for p in passes],
        "target": target.name, "options": target.options, "bindings": bindings, "static_shapes": dims or None,
        "feeds": art.feeds_digest(feeds),
        "gate": gate, "tools": versions, "reference": art.feeds_digest(reference) if reference is not None else None})
    pass_ctx = PassContext(target=target, bindings={**bindings, **dims}, calibration=[feeds], verify_each=verify_each,
                           instruments=[_StatusInstrument(status)])

    def build(tmp: Path) -> dict[str, Any]:
        from vidcc import onnx_io

        status(f"loading {source.path.name}")
        graph = onnx_io.load(source.path)
        nodes_before = len(graph)
        model_path, entries, build_s = optimize_and_build(graph, passes, pass_ctx, target, tmp, feeds, status)
        manifest = {
            "created": art.now(),
            "target": {"name": target.name, "options": target.options, "precision": target.precision},
            "model": {"source": source.spec, "path": str(source.path), "digest": art.model_digest(source.path)},
            "pipeline": {"spec": spec, "passes": [p.spec for p in passes]},
            "bindings": bindings,
            "static_shapes": dims,
            "tool_versions": versions,
            "pass_log": [r.to_json() for r in pass_ctx.log],
            "graph": {"nodes_before": nodes_before, "nodes_after": len(graph), "inputs": V.input_signature(model_path),
                      "outputs": list(graph.outputs)},
            "build": {"seconds": round(build_s, 3), **entries},
        }
        status("verifying against the ONNX Runtime fp32 reference")
        runner = target.load(tmp, manifest)
        try:
            outputs = runner.run(feeds)
        except VidccError:
            raise
        except Exception as exc:
            raise TargetError(f"{target.name}: running the built artifact failed: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        ref = reference if reference is not None else V.reference_outputs(source.path, feeds)
        per_output = V.compare_outputs(outputs, ref)
        verdict = V.judge(per_output, V.gate_for(target.precision, pass_ctx.log, gate_obj_requested))
        art.save_npz_atomic(tmp / art.INPUTS, feeds)
        art.save_npz_atomic(tmp / art.OUTPUTS, {k: outputs[k] for k in ref if k in outputs})
        manifest["verification"] = {
            "reference": ("given by the caller" if reference is not None else
                          "original graph on ONNX Runtime CPU (fp32, basic optimizations)"),
            "inputs": {"file": art.INPUTS, "from": feeds_from,
                       "shapes": {k: [list(v.shape), v.dtype.name] for k, v in feeds.items()}},
            "outputs": art.OUTPUTS,
            "metrics": {k: m.to_json() for k, m in per_output.items()},
            "verdict": verdict.to_json(),
        }
        return manifest

    cache = art.Cache()
    artifact, cached = cache.get_or_build(key, build, reuse=use_cache)
    metrics, verdict = V.from_manifest(artifact.manifest["verification"])
    log = pass_ctx.log if not cached else [PassRecord(**{**r, "details": []}) for r in artifact.manifest["pass_log"]]
    if cached:
        pass_ctx.log = log
    result = CompileResult(artifact, cached, verdict, metrics, log)
    plugins.hook().vidcc_after_compile(artifact=artifact, ctx=pass_ctx)
    if output_dir is not None and verdict.passed:
        status(f"writing {output_dir}")
        result.exported_to = art.export(artifact, output_dir)
    return result


def tune_model(model: str, target_name: str, budget_s: float, *, pipeline: str = "",
               inputs: dict[str, np.ndarray] | None = None,
               status: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run the same passes compile would, then let the target tune the optimized graph for budget_s."""
    import tempfile

    from vidcc import model as models
    from vidcc import onnx_io
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.pipeline import build_pipeline
    from vidcc.target import BuildContext

    target = get_target(target_name)
    require_available(target)
    passes = build_pipeline(full_spec(target, pipeline))
    source = models.resolve(model)
    signature = V.input_signature(source.path)
    feeds = inputs if inputs is not None else source.sample_inputs()
    if feeds is None:
        feeds = V.random_feeds(signature)
    V.check_feeds(feeds, signature)
    status(f"loading {source.path.name}")
    graph = onnx_io.load(source.path)
    ctx = PassContext(target=target, calibration=[feeds], instruments=[_StatusInstrument(status)])
    run_pipeline(graph, passes, ctx)
    with tempfile.TemporaryDirectory(prefix="vidcc-tune-") as tmp:
        path = onnx_io.save(graph, Path(tmp) / "model.onnx")
        return target.tune(path, BuildContext(feeds=feeds, pass_ctx=ctx, work_dir=Path(tmp), status=status), budget_s)

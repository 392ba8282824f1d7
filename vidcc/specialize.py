"""Compiling one engine per routing decision (MoE expert specialization).

When an input is bound to several values (`--bind timestep=999,980,...` or `--schedule wan22-t2v`)
and the graph has routers that depend only on bound inputs (Wan2.2's If on `t >= boundary*1000`, a
timestep-embedding top-k router), the registered pass `precompute-routers` groups the values by the
decisions they take ("routes") and gives one specialized graph per route. Each is run through the
target's pipeline, built into `engines/<i>/` and verified, for every bound value of its route,
against the ORIGINAL graph fed that value (DESIGN.md §8 gates). The manifest's `routes` section holds
the engines and the table step -> bound value -> engine; `vidcc run ARTIFACT --step K` picks one.

The core knows no concrete pass: the router pass is looked up in the plugin registry by name and
must offer `specializations(graph, bindings, shapes)` (see passes/moe.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vidcc.errors import VidccError

ROUTER_PASS = "precompute-routers"
ENGINES = "engines"
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma")


def router_pass():
    """The registered pass class that plans routes, or None."""
    from vidcc import plugins

    entry = plugins.registry().passes.get(ROUTER_PASS)
    return entry.obj if entry is not None and hasattr(entry.obj, "specializations") else None


def timestep_input(inputs: list[str], requested: str | None = None) -> str:
    """The graph input a schedule binds: the one asked for, else the one named like a timestep."""
    if requested:
        if requested not in inputs:
            raise VidccError(f"--schedule-input '{requested}' is not an input of the model ({', '.join(inputs)})")
        return requested
    found = [n for n in inputs if n.lower() in TIMESTEP_NAMES] or [n for n in inputs if "timestep" in n.lower()]
    if len(found) != 1:
        raise VidccError(f"cannot tell which input takes the schedule's timesteps ({', '.join(inputs)}); "
                         f"give --schedule-input NAME")
    return found[0]


def schedule_bindings(schedule: str | None, inputs: list[str], bindings: dict[str, list],
                      input_name: str | None = None) -> tuple[dict[str, list], Any]:
    """Merge a schedule's timesteps into the bindings: (bindings, Schedule or None)."""
    if not schedule:
        return dict(bindings), None
    from vidcc.schedules import parse_schedule

    sched = parse_schedule(schedule)
    name = timestep_input(inputs, input_name)
    if name in bindings:
        raise VidccError(f"'{name}' is bound by both --bind and --schedule; give one")
    return {**bindings, name: list(sched.timesteps)}, sched


def feeds_for(feeds: dict[str, np.ndarray], binding: dict[str, Any]) -> dict[str, np.ndarray]:
    """The sample feeds with every element of each bound input set to its value."""
    out = dict(feeds)
    for name, value in binding.items():
        out[name] = np.full_like(feeds[name], value)
    return out


def _reference_session(model_path: Path):
    # the settings of verification.reference_outputs, one session for every bound value
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def _worst(a, b):
    """The worse of two OutputMetrics of one output (for the summary)."""
    if a is None or b.error:
        return b
    if a.error:
        return a
    return b if (b.max_rel, -b.cosine) > (a.max_rel, -a.cosine) else a


def compile_routed(model: str, target_name: str, *, pipeline: str = "", bindings: dict[str, list] | None = None,
                   schedule: str | None = None, schedule_input: str | None = None,
                   inputs: dict[str, np.ndarray] | None = None, output_dir: str | Path | None = None,
                   use_cache: bool = True, gate: str | None = None, verify_each: bool = False,
                   status: Callable[[str], None] = lambda message: None):
    """compile_model for a model with precomputable routers under the bindings: (CompileResult, bindings).
    The result is None when no router depends on the bindings (the caller then compiles one engine as
    usual, with the returned bindings, which include the schedule's)."""
    from vidcc import artifact as art
    from vidcc import model as models
    from vidcc import onnx_io, plugins
    from vidcc import verification as V
    from vidcc.compile import (CompileResult, _StatusInstrument, full_spec, get_target, optimize_and_build,
                               require_available)
    from vidcc.pass_manager import PassContext, PassRecord
    from vidcc.pipeline import build_pipeline

    cls = router_pass()
    target = get_target(target_name)
    require_available(target)
    spec = full_spec(target, pipeline)
    passes = build_pipeline(spec)
    reg = plugins.registry()
    status(f"resolving {model}")
    source = models.resolve(model)
    signature = V.input_signature(source.path)
    bindings, sched = schedule_bindings(schedule, list(signature), bindings or {}, schedule_input)
    unknown = [k for k in bindings if k not in signature]
    if unknown:
        raise VidccError(f"--bind {unknown[0]}: the model has no input '{unknown[0]}' (inputs: {', '.join(signature)})")
    feeds, feeds_from = V.choose_feeds(source, signature, inputs)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}

    status(f"loading {source.path.name}")
    graph = onnx_io.load(source.path)
    if cls is None or not cls.has_routers(graph, bindings):
        return None, bindings
    versions = art.tool_versions(target)
    key = art.content_key({
        "kind": "routed/1", "model": art.model_digest(source.path),
        "passes": [(p.spec, reg.plugin_of(type(p))) for p in passes], "router": reg.plugin_of(cls),
        "target": target.name, "options": target.options, "bindings": bindings,
        "schedule": sched.to_json() if sched else None, "feeds": art.feeds_digest(feeds),
        "gate": gate, "tools": versions})
    n_values = len(next(iter(bindings.values())))

    def build(tmp: Path) -> dict[str, Any]:
        t_start = time.perf_counter()
        status("planning routes")
        t0 = time.perf_counter()
        specs = cls.specializations(graph, bindings, shapes)
        plan_s = time.perf_counter() - t0
        original_bytes = cls.weight_bytes(graph)
        reference = _reference_session(source.path)
        ref_names = [o.name for o in reference.get_outputs()]
        engines, worst, failures, all_logs = [], {}, [], []
        gate_obj = None
        for i, s in enumerate(specs):
            positions = s.route.positions
            first = {k: v[positions[0]] for k, v in bindings.items()}
            engine_dir = tmp / ENGINES / str(i)
            engine_dir.mkdir(parents=True)
            status(f"engine {i}: passes ({len(s.graph)} nodes)")
            ctx = PassContext(target=target, bindings={k: [v[p] for p in positions] for k, v in bindings.items()},
                              calibration=[feeds_for(feeds, first)], verify_each=verify_each,
                              instruments=[_StatusInstrument(status)])
            g = s.graph
            nodes_specialized = len(g)
            model_path, entries, build_s = optimize_and_build(
                g, passes, ctx, target, engine_dir, feeds_for(feeds, first),
                lambda message, i=i: status(f"engine {i}: {message}"))
            engine_manifest = {"build": {"seconds": round(build_s, 3), **entries}}
            runner = target.load(engine_dir, engine_manifest)
            gate_obj = V.gate_for(target.precision, ctx.log, gate)
            status(f"engine {i}: verifying {len(positions)} bound values against the original graph")
            per_value = []
            engine_worst: dict[str, Any] = {}
            for p in positions:
                value = {k: v[p] for k, v in bindings.items()}
                f = feeds_for(feeds, value)
                ref = dict(zip(ref_names, reference.run(ref_names, f)))
                out = runner.run(f)
                per_output = V.compare_outputs(out, ref)
                verdict = V.judge(per_output, gate_obj)
                for name, m in per_output.items():
                    engine_worst[name] = _worst(engine_worst.get(name), m)
                    worst[name] = _worst(worst.get(name), m)
                failures += [f"step {p} ({_show(value)}): {x}" for x in verdict.failures]
                per_value.append({"step": p, "value": _show(value),
                                  "max_rel": max((m.max_rel for m in per_output.values() if not m.error), default=None),
                                  "passed": verdict.passed})
            if 0 in positions:  # what `vidcc run ARTIFACT` reproduces: the sample inputs at step 0
                f0 = feeds_for(feeds, {k: v[0] for k, v in bindings.items()})
                out0 = runner.run(f0)
                art.save_npz_atomic(tmp / art.INPUTS, f0)
                art.save_npz_atomic(tmp / art.OUTPUTS, {k: out0[k] for k in ref_names if k in out0})
            wbytes = cls.weight_bytes(g)
            all_logs.append(ctx.log)
            engines.append({
                "id": i, "dir": f"{ENGINES}/{i}", "decisions": s.route.decisions, "steps": positions,
                "values": [_show({k: v[p] for k, v in bindings.items()}) for p in positions],
                "nodes_specialized": nodes_specialized, "nodes": len(g), "weight_bytes": wbytes,
                "weight_fraction": round(wbytes / original_bytes, 4) if original_bytes else None,
                "build": engine_manifest["build"], "pass_log": [r.to_json() for r in ctx.log],
                "events": [e for e in s.events if e.get("kind") != "routed"],
                "verification": {"gate": gate_obj.kind, "per_value": per_value,
                                 "metrics": {k: m.to_json() for k, m in engine_worst.items()}},
            })
        table = []
        for p in range(n_values):
            engine = next(e["id"] for e in engines if p in e["steps"])
            row = {"step": p, **{k: v[p] for k, v in bindings.items()}, "engine": engine}
            if sched is not None:
                row["schedule_expert"] = sched.expert(p)
            table.append(row)
        verdict = V.Verdict(not failures, gate_obj, failures)
        router_record = PassRecord(ROUTER_PASS, ROUTER_PASS, reg.plugin_of(cls), True, plan_s, len(graph),
                                   max(e["nodes_specialized"] for e in engines),
                                   {"routes": len(engines), "bound_values": n_values,
                                    "weight_bytes_before": original_bytes,
                                    "weight_bytes_after_max": max(e["weight_bytes"] for e in engines)})
        return {
            "created": art.now(),
            "target": {"name": target.name, "options": target.options, "precision": target.precision},
            "model": {"source": source.spec, "path": str(source.path), "digest": art.model_digest(source.path)},
            "pipeline": {"spec": spec, "passes": [p.spec for p in passes]},
            "bindings": bindings,
            "tool_versions": versions,
            "pass_log": [router_record.to_json()] + [r.to_json() for r in all_logs[0]],
            "graph": {"nodes_before": len(graph), "nodes_after": max(e["nodes"] for e in engines),
                      "inputs": signature, "outputs": ref_names},
            "build": {"seconds": round(time.perf_counter() - t_start, 3), "engines": len(engines)},
            "routes": {"inputs": list(bindings), "schedule": sched.to_json() if sched else None,
                       "weight_bytes_original": original_bytes, "engines": engines, "table": table},
            "verification": {
                "reference": "original (unspecialized) graph on ONNX Runtime CPU (fp32, basic optimizations), "
                             "fed each bound value",
                "inputs": {"file": art.INPUTS, "from": feeds_from, "step": 0,
                           "shapes": {k: [list(v.shape), v.dtype.name] for k, v in feeds.items()}},
                "outputs": art.OUTPUTS,
                "metrics": {k: m.to_json() for k, m in worst.items()},
                "verdict": verdict.to_json(),
            },
        }

    cache = art.Cache()
    artifact, cached = cache.get_or_build(key, build, reuse=use_cache)
    metrics, verdict = V.from_manifest(artifact.manifest["verification"])
    log = [PassRecord(**{**r, "details": []}) for r in artifact.manifest["pass_log"]]
    result = CompileResult(artifact, cached, verdict, metrics, log)
    plugins.hook().vidcc_after_compile(artifact=artifact, ctx=PassContext(target=target, bindings=bindings, log=log))
    if output_dir is not None and verdict.passed:
        status(f"writing {output_dir}")
        result.exported_to = art.export(artifact, output_dir)
    return result, bindings


def _show(value: dict[str, Any]):
    return next(iter(value.values())) if len(value) == 1 else value


# ---- running a routed artifact -------------------------------------------------------------------

def is_routed(manifest: dict[str, Any]) -> bool:
    return bool(manifest.get("routes"))


def step_for_feeds(manifest: dict[str, Any], feeds: dict[str, np.ndarray]) -> int | None:
    """The first step whose bound values the feeds carry (every element equal), or None."""
    routes = manifest["routes"]
    for row in routes["table"]:
        if all(name in feeds and np.all(np.asarray(feeds[name]) == row[name]) for name in routes["inputs"]):
            return row["step"]
    return None


def engine_runner(artifact, step: int):
    """(runner, table row) of the engine that serves `step`."""
    routes = artifact.manifest["routes"]
    table = routes["table"]
    if not 0 <= step < len(table):
        raise VidccError(f"--step {step} is out of range: the artifact has steps 0..{len(table) - 1}")
    row = table[step]
    engine = routes["engines"][row["engine"]]
    target = artifact.target()
    why = target.available()
    if not why:
        raise VidccError(f"target '{target.name}' cannot run here: {why.reason}")
    return target.load(artifact.path / engine["dir"], {"build": engine["build"]}), row


def bind_step(manifest: dict[str, Any], feeds: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """Feeds with the bound inputs set to the step's values (the engine is exact only for those)."""
    row = manifest["routes"]["table"][step]
    return feeds_for(feeds, {k: row[k] for k in manifest["routes"]["inputs"]})


def routes_tables(routes: dict[str, Any]) -> list:
    """Rich tables for a routed artifact: the engines, then step -> bound value -> engine."""
    from rich.table import Table

    engines = Table(title="engines (one per routing decision)")
    for col, just in (("engine", "right"), ("steps", "right"), ("decisions", "left"), ("nodes", "right"),
                      ("weight bytes", "right"), ("of original", "right"), ("worst max rel", "right")):
        engines.add_column(col, justify=just)
    for e in routes["engines"]:
        rels = [v["max_rel"] for v in e["verification"]["per_value"] if v["max_rel"] is not None]
        engines.add_row(str(e["id"]), str(len(e["steps"])), "; ".join(f"{k}: {v}" for k, v in e["decisions"].items()),
                        str(e["nodes"]), f"{e['weight_bytes']:,}",
                        f"{e['weight_fraction']:.1%}" if e["weight_fraction"] is not None else "-",
                        f"{max(rels):.3g}" if rels else "-")
    steps = Table(title="steps")
    cols = ["step", *routes["inputs"], "engine"] + (["schedule expert"] if routes.get("schedule") else [])
    for col in cols:
        steps.add_column(col, justify="right")
    for row in routes["table"]:
        steps.add_row(*(str(row.get(c.replace("schedule expert", "schedule_expert"), "")) for c in cols))
    return [engines, steps]

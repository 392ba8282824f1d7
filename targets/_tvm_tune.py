"""`vidcc tune MODEL --target tvm-llvm --budget 20m`: MetaSchedule where the time goes.

Measured on the tiny SVD UNet (DESIGN.md §10): MetaSchedule's gradient task scheduler first gives every
one of ~180 tasks a round of trials, so 50 minutes touched 64 tasks and ended 17x behind ONNX Runtime.
Here instead:

1. build the model with the default schedules and time every fused function inside a real run (VM
   instrument): the tasks are ranked by the time they take in the model (per-call time x calls);
2. the default schedule of each chosen task is measured alone and committed to the database as a
   tuning record: the database's best is then never worse than the default, and the search starts
   from it;
3. tasks are tuned one at a time, most expensive first, trials in proportion to their share of the
   time, until the budget (wall clock, including the builds) is spent;
4. the model is rebuilt and timed again, so the report says what tuning bought end to end.

The database is MetaSchedule's JSONDatabase under `<cache>/tvm-tuning/<target digest>/`, keyed by
workload (structural hash of each fused function): any later compile for the same target applies the
records of every workload it contains (`MetaScheduleApplyDatabase`), whatever model it came from.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidcc.artifact import cache_dir, write_json_atomic
from vidcc.errors import TargetError

TRIALS_PER_ITER = 16
COVER = 0.95  # tune the tasks that together take this share of the time


@dataclass
class TuningDatabase:
    root: Path

    @classmethod
    def for_target(cls, target_json: dict[str, Any]) -> "TuningDatabase":
        key = hashlib.sha256(json.dumps(target_json, sort_keys=True).encode()).hexdigest()[:16]
        return cls(cache_dir() / "tvm-tuning" / key)

    @property
    def records_path(self) -> Path:
        return self.root / "database_tuning_record.json"

    @property
    def workloads_path(self) -> Path:
        return self.root / "database_workload.json"

    def digest(self) -> str:
        if not self.records_path.is_file():
            return "empty"
        return hashlib.sha256(self.records_path.read_bytes()).hexdigest()[:16]

    def applied_count(self) -> int:
        if not self.records_path.is_file():
            return 0
        return sum(1 for line in self.records_path.read_text().splitlines() if line.strip())

    def open(self):
        from tvm.s_tir import meta_schedule as ms

        self.root.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(str(self.workloads_path), str(self.records_path), module_equality="structural")

    def apply(self, mod, target):
        """Replace every fused function the database knows by its best schedule."""
        if self.applied_count() == 0:
            return mod
        from tvm import relax

        with self.open():
            return relax.transform.MetaScheduleApplyDatabase()(mod)


def tune(tvm_target, model_path: Path, ctx, budget_s: float) -> dict[str, Any]:
    import contextlib
    import sys

    # MetaSchedule's loggers write to stdout, which belongs to `--json`
    with contextlib.redirect_stdout(sys.stderr):
        return _tune(tvm_target, model_path, ctx, budget_s)


def _tune(tvm_target, model_path: Path, ctx, budget_s: float) -> dict[str, Any]:
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from .tvm import import_relax

    started = time.monotonic()
    status = ctx.status
    target = tvm.target.Target(tvm_target.target_json())
    db = tvm_target.database()
    status("importing into TVM Relax")
    mod, shapes, order = import_relax(model_path, ctx.feeds)
    feeds = [ctx.feeds[n] for n in order]

    status("building with the default schedules and timing every function")
    before_ms, per_func = _profile(tvm_target, mod, target, feeds, db)
    fused = _legalize_and_fuse(mod, target)
    extracted = ms.relax_integration.extract_tasks(fused, target)
    by_name = {t.task_name: t for t in extracted}
    ranked = sorted(((per_func.get(name, 0.0), name) for name in by_name), reverse=True)
    total = sum(t for t, _ in ranked) or 1.0
    chosen, covered = [], 0.0
    for spent, name in ranked:
        if covered >= COVER * total or spent <= 0:
            break
        chosen.append((name, spent))
        covered += spent

    _light_tensor_intrinsics()
    database = db.open()
    builder, runner = _in_process()
    callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()]
    cost_model = _cost_model()
    report_tasks = []
    for name, spent in chosen:
        if budget_s - (time.monotonic() - started) < 15:
            break
        task = by_name[name]
        share = spent / total
        func_mod = task.dispatched[0]
        default_s = _seed_default(func_mod, target, database)
        best_before = _best(database, func_mod, target)
        # trials in proportion to the task's share of the time; MetaSchedule runs in rounds of
        # TRIALS_PER_ITER, and the clock is checked after every round
        want = max(TRIALS_PER_ITER, int(round(share * 512 / TRIALS_PER_ITER)) * TRIALS_PER_ITER)
        contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task], str(db.root / "logs"), strategy=ms.search_strategy.EvolutionarySearch(population_size=128),
            num_threads=max(1, os.cpu_count() or 1))
        _quiet_logs()
        done, t0, error = 0, time.monotonic(), None
        while done < want and budget_s - (time.monotonic() - started) > 10:
            status(f"tuning {name} ({share:.0%} of the time): {done}/{want} trials, "
                   f"{budget_s - (time.monotonic() - started):.0f} s left")
            try:
                ms.tune.tune_tasks(tasks=contexts, task_weights=[1.0], work_dir=str(db.root),
                                   max_trials_global=TRIALS_PER_ITER, num_trials_per_iter=TRIALS_PER_ITER,
                                   builder=builder, runner=runner, database=database, cost_model=cost_model,
                                   measure_callbacks=callbacks, task_scheduler="round-robin")
            except Exception as exc:  # a task MetaSchedule cannot handle does not end the session
                error = f"{type(exc).__name__}: {exc}"[:300]
                break
            done += TRIALS_PER_ITER
            contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task], str(db.root / "logs"), strategy=ms.search_strategy.EvolutionarySearch(population_size=128),
                num_threads=max(1, os.cpu_count() or 1))
            _quiet_logs()
        best_after = _best(database, func_mod, target)
        report_tasks.append({"task": name, "calls_ms_in_model": round(spent * 1e3, 3), "share": round(share, 4),
                             "trials": done, "seconds": round(time.monotonic() - t0, 1),
                             "default_us": _us(default_s), "best_before_us": _us(best_before),
                             "best_after_us": _us(best_after), **({"error": error} if error else {})})

    status("rebuilding with the tuned database and timing the model")
    after_ms, _ = _profile(tvm_target, mod, target, feeds, db, per_function=False)
    report = {"target": tvm_target.name, "tvm_target": tvm_target.target_json(), "budget_s": budget_s,
              "seconds": round(time.monotonic() - started, 1), "tasks_total": len(extracted),
              "tasks_tuned": len(report_tasks), "cost_model": type(cost_model).__name__, "database": str(db.root),
              "model_ms_before": round(before_ms, 3), "model_ms_after": round(after_ms, 3), "tasks": report_tasks}
    db.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(db.root / "last_tune.json", report)
    return report


def _light_tensor_intrinsics() -> None:
    """MetaSchedule's builder and llvm space generator import tvm.s_tir.tensor_intrin, which parses the
    TVMScript of every tensor intrinsic TVM has: 107 s on this 2-core machine (74 s of it CUDA's), paid
    by every process that tunes. CPU tuning needs at most the x86 ones (VNNI dot products), so the
    package is registered empty (its submodules stay importable) and only those are loaded."""
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations or [])
    module.__spec__ = spec
    sys.modules[name] = module
    from .tvm import cpu_features

    if {"avx512_vnni", "avx_vnni", "avx512vnni"} & cpu_features():
        importlib.import_module(f"{name}.x86")


def _quiet_logs() -> None:
    """MetaSchedule logs every round to stdout; keep its files (work_dir/logs) and quiet the console."""
    import logging

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("tvm.s_tir.meta_schedule") and isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    handler.setLevel(logging.WARNING)


def _in_process():
    """MetaSchedule builder and runner that work in this process. Its LocalBuilder/LocalRunner start
    popen workers that import TVM; on a busy 2-core machine one tiny candidate took 80-110 s there
    (and hit the 30 s timeout) against 0.08 s here. Built modules stay in memory, keyed by a fake path."""
    import itertools

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    built: dict[str, Any] = {}
    counter = itertools.count()
    config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)

    @derived_object
    class Builder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    key = f"vidcc-in-memory-{next(counter)}"
                    built[key] = _build(item.mod, item.target)
                    results.append(ms.builder.BuilderResult(key, None))
                except Exception as exc:  # an invalid candidate is a failed trial, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"[:2000]))
            return results

    @derived_object
    class Done(ms.runner.PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self._result = result

        def done(self):
            return True

        def result(self):
            return self._result

    @derived_object
    class Runner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futures = []
            dev = tvm.cpu()
            for item in runner_inputs:
                rt = built.pop(item.artifact_path, None)
                try:
                    args = alloc_argument_common(_random_fill(), dev, [a.as_json() for a in item.args_info], 1)
                    secs = run_evaluator_common(rt, dev, config, args)
                    futures.append(Done(ms.runner.RunnerResult([float(x) for x in secs], None)))
                except Exception as exc:
                    futures.append(Done(ms.runner.RunnerResult(None, f"{type(exc).__name__}: {exc}"[:2000])))
            return futures

    return Builder(), Runner()


def _build(mod, target):
    """MetaSchedule's default_build, through tvm.compile (its tvm.build is deprecated)."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    funcs = {gv: f if "global_symbol" in (f.attrs or {}) else f.with_attr("global_symbol", gv.name_hint)
             for gv, f in mod.functions_items()}
    return tvm.tirx.build(tvm.IRModule(funcs), target=target)  # a runtime module: time_evaluator


def _random_fill():
    import tvm

    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)
    if fill is not None:
        return fill

    def fallback(t):
        t.copyfrom(np.random.default_rng(0).uniform(-1, 1, [int(d) for d in t.shape]).astype(t.dtype))

    return fallback


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 2)


def _cost_model():
    from tvm.s_tir import meta_schedule as ms

    try:
        import xgboost  # noqa: F401

        return ms.cost_model.XGBModel(num_tuning_cores=max(1, os.cpu_count() or 1))
    except ImportError:  # without xgboost the search is random: still correct, less efficient
        return ms.cost_model.RandomModel()


def _legalize_and_fuse(mod, target):
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            relax.backend.cpu_generic.pipeline.library_dispatch_passes(target)
            + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
               relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)


def _profile(tvm_target, mod, target, feeds, db, *, per_function: bool = True, runs: int = 5):
    """(median model latency in ms, {function name: seconds per model run})."""
    import tvm
    import tvm_ffi
    from tvm import relax

    from vidcc.measure import time_fn

    try:
        ex = tvm.compile(mod, target=target, relax_pipeline=tvm_target.relax_pipeline(target, db))
    except Exception as exc:
        raise TargetError(f"TVM failed to compile the graph: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}") from None
    dev = tvm.cpu() if tvm_target.kind == "llvm" else tvm.cuda()
    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in feeds]
    latency = time_fn(lambda: vm["main"](*args), runs=runs, warmup=1).median_ms
    if not per_function:
        return latency, {}
    spent: dict[str, list[float]] = collections.defaultdict(list)
    started: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *rest):
        if before:
            started[symbol] = time.perf_counter()
        else:
            spent[symbol].append(time.perf_counter() - started.pop(symbol, time.perf_counter()))
        return 0

    vm.set_instrument(tvm_ffi.convert(instrument))
    for _ in range(3):
        vm["main"](*args)
    return latency, {k: sum(v) / 3 for k, v in spent.items()}


def _seed_default(func_mod, target, database) -> float | None:
    """Measure the default schedule of one task and commit it as a tuning record; its seconds."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    from ._tvm_schedule import cpu_rules
    from .tvm import detect_cpu

    func = func_mod["main"]
    sch = None
    for rule in cpu_rules(detect_cpu()[1]):
        space = rule.apply(func, target, False)
        if space is not None:
            sch = space[0] if isinstance(space, list) else space
            break
    if sch is None:  # no rule applies: the unscheduled function is the default
        sch = s_tir.Schedule(func_mod)
    try:
        from tvm.s_tir.meta_schedule.runner import EvaluatorConfig
        from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

        rt = _build(sch.mod, target)
        dev = tvm.cpu()
        info = [a.as_json() for a in ms.arg_info.ArgInfo.from_prim_func(func)]
        args = alloc_argument_common(_random_fill(), dev, info, 1)
        secs = run_evaluator_common(rt, dev, EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20), args)
        secs = [float(x) for x in secs]
    except Exception:
        return None
    workload = database.commit_workload(func_mod)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, secs, target, ms.arg_info.ArgInfo.from_prim_func(func)))
    return float(np.median(secs))


def _best(database, func_mod, target) -> float | None:
    rec = database.query_tuning_record(func_mod, target, "main")
    if rec is None or not rec.run_secs:
        return None
    return float(np.mean([float(s) for s in rec.run_secs]))

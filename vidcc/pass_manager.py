"""Passes, their context, and the manager that runs them with verification and rollback."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vidcc.errors import PassError, VidccError
from vidcc.ir import Graph, verify


@dataclass
class PassResult:
    """What a pass did. `stats` are counts (e.g. {"GroupNorm": "37/37"}); `details` are events for
    explain: {"kind": "fused"|"refused"|"removed"|..., "node": name, "reason": ...}."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Pass:
    """Base of every pass: a frozen dataclass whose fields are its options.

    Subclasses set `name` (kebab-case), write a docstring that lists the rewrite cases, and implement
    `run(graph, ctx) -> PassResult`. `lossy = True` for passes that change results (pruning, precision).
    `requires`/`ensures` may raise to say a precondition/postcondition does not hold."""

    name: ClassVar[str] = ""
    lossy: ClassVar[bool] = False

    def requires(self, graph: Graph, ctx: "PassContext") -> None:
        pass

    def run(self, graph: Graph, ctx: "PassContext") -> PassResult:
        raise NotImplementedError

    def ensures(self, graph: Graph, ctx: "PassContext") -> None:
        pass

    def __call__(self, graph: Graph, ctx: "PassContext | None" = None) -> PassResult:
        ctx = ctx or PassContext()
        self.requires(graph, ctx)
        result = self.run(graph, ctx)
        self.ensures(graph, ctx)
        return result

    @property
    def spec(self) -> str:
        """The spec string that recreates this pass with its options."""
        opts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != _default(f)]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    s = str(v).lower() if isinstance(v, bool) else str(v)
    return f'"{s}"' if any(c in s for c in ",{}[]=\"") else s


class Instrument:
    """Observes the pipeline. Override what you need."""

    def before_pass(self, pass_: Pass, graph: Graph, ctx: "PassContext") -> None:
        pass

    def after_pass(self, pass_: Pass, graph: Graph, ctx: "PassContext", result: PassResult, seconds: float) -> None:
        pass

    def pass_failed(self, pass_: Pass, graph: Graph, ctx: "PassContext", error: Exception) -> None:
        pass


@dataclass
class PassRecord:
    """One entry of the pass log (manifest, explain)."""

    name: str
    spec: str
    plugin: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    lossy: bool = False

    def to_json(self, with_details: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_details:
            d.pop("details")
        return d


@dataclass
class PassContext:
    target: Any = None  # the Target being compiled for, or None
    opt_level: int = 2
    disabled: set[str] = field(default_factory=set)
    bindings: dict[str, list] = field(default_factory=dict)  # input name -> bound values (e.g. timesteps)
    calibration: list[dict[str, np.ndarray]] | None = None  # feeds for calibration-aware passes
    instruments: list[Instrument] = field(default_factory=list)
    verify_each: bool = False
    keep_going: bool = False
    pass_timeout: float | None = None  # seconds; a pass running longer is stopped and rolled back
    work_dir: Path | None = None
    log: list[PassRecord] = field(default_factory=list)

    def supports(self, op_type: str, domain: str = "") -> bool:
        """Whether the target accepts an op (fusions emit only what the target can run)."""
        if self.target is None:
            return domain in ("", "ai.onnx")
        return self.target.supports(op_type, domain)


class TimingInstrument(Instrument):
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def after_pass(self, pass_, graph, ctx, result, seconds):
        self.seconds[pass_.name] = self.seconds.get(pass_.name, 0.0) + seconds


class IRDumpInstrument(Instrument):
    """Writes the graph after each pass as text (and ONNX with `onnx=True`) into a directory."""

    def __init__(self, directory: str | Path, onnx: bool = False):
        self.dir = Path(directory)
        self.onnx = onnx
        self.count = 0

    def after_pass(self, pass_, graph, ctx, result, seconds):
        from vidcc.printer import format_graph

        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"{self.count:03d}-{pass_.name}"
        stem.with_suffix(".txt").write_text(format_graph(graph))
        if self.onnx:
            from vidcc import onnx_io

            onnx_io.save(graph, stem.with_suffix(".onnx"))
        self.count += 1


class PassTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    # SIGALRM interrupts pure-Python loops and sleeps; only possible on the main thread.
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise PassTimeout(f"ran longer than its {seconds:g} s time limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class PassManager:
    """Runs passes in order. Each pass runs inside a snapshot: if it raises, times out, or leaves a
    graph verify() rejects, the graph is restored exactly and a PassError names the pass, its plugin
    and the node. `fixpoint=True` repeats the pipeline until no pass changes the graph."""

    def __init__(self, passes: list[Pass], *, fixpoint: bool = False, max_iterations: int = 8):
        self.passes = list(passes)
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations

    def run(self, graph: Graph, ctx: PassContext | None = None) -> bool:
        ctx = ctx or PassContext()
        changed_any = False
        for _ in range(self.max_iterations if self.fixpoint else 1):
            changed = False
            for p in self.passes:
                if p.name in ctx.disabled:
                    continue
                changed |= self._run_one(p, graph, ctx)
            changed_any |= changed
            if not changed:
                break
        return changed_any

    def _run_one(self, p: Pass, graph: Graph, ctx: PassContext) -> bool:
        from vidcc import plugins

        plugin = plugins.registry().plugin_of(type(p))
        hook = plugins.hook()
        for inst in ctx.instruments:
            inst.before_pass(p, graph, ctx)
        hook.vidcc_before_pass(pass_=p, graph=graph, ctx=ctx)
        snap = graph.snapshot()
        before = len(graph)
        start = time.perf_counter()
        try:
            with _time_limit(ctx.pass_timeout):
                result = p(graph, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"run() returned {type(result).__name__}, not PassResult")
            if ctx.verify_each:
                verify(graph)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                graph.restore(snap)
                raise
            graph.restore(snap)
            seconds = time.perf_counter() - start
            for inst in ctx.instruments:
                inst.pass_failed(p, graph, ctx, exc)
            message = _describe_failure(p, plugin, exc)
            ctx.log.append(PassRecord(p.name, p.spec, plugin, False, seconds, before, before, error=message, lossy=p.lossy))
            if ctx.keep_going:
                return False
            raise PassError(message, pass_name=p.name, plugin=plugin, node=getattr(exc, "node", None)) from exc
        seconds = time.perf_counter() - start
        ctx.log.append(PassRecord(p.name, p.spec, plugin, result.modified, seconds, before, len(graph),
                                  dict(result.stats), list(result.details), lossy=p.lossy))
        for inst in ctx.instruments:
            inst.after_pass(p, graph, ctx, result, seconds)
        hook.vidcc_after_pass(pass_=p, graph=graph, ctx=ctx, result=result)
        return result.modified


def _describe_failure(p: Pass, plugin: str, exc: BaseException) -> str:
    what = str(exc) if isinstance(exc, (VidccError, PassTimeout)) else f"{type(exc).__name__}: {exc}"
    node = getattr(exc, "node", None)
    where = f" at node {getattr(node, 'label', node)}" if node is not None else ""
    return f"pass '{p.name}' (plugin '{plugin}') failed{where}: {what}; the graph was rolled back"


def run_pipeline(graph: Graph, spec: str | list[Pass], ctx: PassContext | None = None, *, fixpoint: bool = False) -> PassContext:
    """Parse (if needed) and run a pipeline spec on a graph; returns the context with the pass log."""
    from vidcc.pipeline import build_pipeline

    ctx = ctx or PassContext()
    passes = build_pipeline(spec) if isinstance(spec, str) else spec
    PassManager(passes, fixpoint=fixpoint).run(graph, ctx)
    return ctx

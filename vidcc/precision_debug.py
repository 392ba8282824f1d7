"""Which nodes must stay in fp32 for a graph to reach a target cosine in reduced precision?

Like Polygraphy's `debug precision`, but over vidcc's precision tags: start from tag-precision's
policy (or from everything low), then bisect over the low-tagged compute nodes in topological order.
Each step forces a set of nodes to fp32, materializes the graph and runs it on a runtime that really
computes in half (TVM llvm; ONNX Runtime CPU upcasts fp16, so it cannot judge). Assuming that more
fp32 never hurts, the search finds the shortest prefix that reaches the target, keeps its last node,
and repeats on the nodes before it until the kept set alone reaches the target; a last sweep drops
any kept node the target does not need (so the set is 1-minimal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vidcc.halfrun import min_cosine, run_ort
from vidcc.ir import Graph

NAIVE = "keep_ops=[],norm_patterns=false,calibrate=false,reduce_extent=2000000000"
# ops a runtime cannot compute in a dtype at all (TVM 0.27: layer_norm has no bf16 kernel, and its
# `power` takes no bfloat type): kept fp32 in every candidate graph, they are not precision findings
RUNTIME_GAPS = {("tvm-llvm", "bf16"): ("LayerNormalization", "Pow")}


@dataclass
class Evaluation:
    fp32_forced: int
    cosine: float
    seconds: float


@dataclass
class DebugResult:
    dtype: str
    runtime: str
    target: float
    start: str
    candidates: int
    start_cosine: float
    all_fp32_cosine: float | None
    needed: list[str] = field(default_factory=list)
    final_cosine: float | None = None
    reached: bool = False
    evaluations: list[Evaluation] = field(default_factory=list)
    note: str = ""
    runtime_gaps: list[str] = field(default_factory=list)  # ops kept fp32 because the runtime lacks them

    @property
    def spec(self) -> str:
        """The tag-precision option that reproduces the result."""
        import re

        from vidcc.pass_manager import _fmt

        pats = [f"name:^{re.escape(n)}$" for n in self.needed]
        return f"force_fp32={_fmt(pats)}" if pats else ""

    def to_json(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["spec"] = self.spec
        return d


def _runner(runtime: str) -> Callable:
    if runtime == "tvm-llvm":
        from vidcc.halfrun import run_tvm_llvm

        return run_tvm_llvm
    if runtime == "ort":
        return run_ort
    from vidcc.errors import VidccError

    raise VidccError(f"unknown runtime '{runtime}' for precision debugging (tvm-llvm, ort)")


def debug_precision(graph: Graph, feeds: dict[str, np.ndarray], *, dtype: str = "fp16", cosine: float = 0.999,
                    runtime: str = "tvm-llvm", start: str = "policy", tag_options: str = "",
                    max_evals: int = 60, log: Callable[[str], None] = lambda s: None) -> DebugResult:
    """`graph` is the fp32 graph as the target would see it (cleaned, fused); it is not changed."""
    from vidcc.pass_manager import PassContext, run_pipeline

    run = _runner(runtime)
    reference = run_ort(graph, feeds)
    tagged = graph.copy()
    gaps = RUNTIME_GAPS.get((runtime, dtype), ())
    gap_opt = f"keep_extra=[{','.join(gaps)}]" if gaps and "keep_extra" not in tag_options else ""
    opts = ",".join(o for o in (f"dtype={dtype}", NAIVE if start == "naive" else "", gap_opt, tag_options) if o)
    ctx = PassContext(calibration=[feeds])
    run_pipeline(tagged, f"tag-precision{{{opts}}}", ctx)
    rules = {d["node"]: d.get("rule") for d in ctx.log[-1].details}
    candidates = [n.id for n in tagged.toposort()
                  if n.precision == dtype and rules.get(n.name or n.label) != "neutral"]
    names = {n.id: n.name or n.label for n in tagged.nodes}
    cache: dict[frozenset, float] = {}
    result = DebugResult(dtype, runtime, cosine, start, len(candidates), float("nan"), None)
    if gap_opt:
        result.runtime_gaps = list(gaps)

    def evaluate(forced) -> float:
        key = frozenset(forced)
        if key in cache:
            return cache[key]
        if len(result.evaluations) >= max_evals:
            raise _Budget()
        g = tagged.copy()
        for nid in key:
            g.node(nid).precision = "fp32"
        run_pipeline(g, "materialize-precision", PassContext())
        t0 = time.perf_counter()
        try:
            value = min_cosine(run(g, feeds), reference)
        except Exception as exc:  # a graph the runtime refuses counts as a failure to reach the target
            log(f"  runtime failed with {len(key)} forced: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            value = -1.0
        result.evaluations.append(Evaluation(len(key), value, time.perf_counter() - t0))
        log(f"  {len(key):4d} nodes forced to fp32: cosine {value:.6f}")
        cache[key] = value
        return value

    def ok(forced) -> bool:
        return evaluate(forced) >= cosine

    try:
        result.start_cosine = evaluate(())
        if result.start_cosine >= cosine:
            result.reached, result.final_cosine = True, result.start_cosine
            result.note = f"the {start} tagging already reaches the target"
            return result
        result.all_fp32_cosine = evaluate(candidates)
        if result.all_fp32_cosine < cosine:
            result.note = "even with every candidate in fp32 the target is not reached"
            return result
        needed: list[int] = []
        pool = list(candidates)
        while not ok(needed):
            lo, hi = 0, len(pool)  # ok(needed + pool[:hi]) holds, ok(needed + pool[:lo]) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ok(needed + pool[:mid]):
                    hi = mid
                else:
                    lo = mid
            needed.append(pool[hi - 1])
            pool = pool[: hi - 1]
            result.needed = [names[n] for n in needed]
        result.reached, result.final_cosine = True, cache[frozenset(needed)]
        for nid in list(needed):  # 1-minimal: drop what the target does not need
            rest = [n for n in needed if n != nid]
            if rest and ok(rest):
                needed = rest
                result.needed, result.final_cosine = [names[n] for n in needed], cache[frozenset(needed)]
    except _Budget:
        result.note = f"stopped after {max_evals} evaluations (raise --max-evals)"
    return result


def forget_generated_dims(graph: Graph) -> int:
    """Drop shape inference's generated dim names (unk__N) from tensor types. Inference run more than
    once (cleanup does) can give one unk__N to different sizes, and ONNX Runtime's memory planner, which
    trusts equal names, then fails ('Shape mismatch attempting to re-use buffer')."""
    from vidcc.ir import TensorType

    dropped = 0
    for name, t in list(graph.types.items()):
        if t.shape and any(isinstance(d, str) and d.startswith("unk__") for d in t.shape):
            graph.types[name] = TensorType(t.dtype, tuple(None if isinstance(d, str) and d.startswith("unk__")
                                                          else d for d in t.shape))
            dropped += 1
    return dropped


class _Budget(Exception):
    pass

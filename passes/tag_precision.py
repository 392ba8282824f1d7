"""tag-precision: decide, per node, whether it computes in fp16/bf16 or stays in fp32."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from onnx import TensorProto as T

from vidcc.errors import SpecError
from vidcc.ir import Graph, Node
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.precision_schema import LOW_DTYPES, MAX_FINITE, NAMES, first_opset_allowing, node_binding

# Ops that accumulate or overflow: kept in fp32 unless the user forces them low.
DEFAULT_KEEP_OPS = ("Softmax", "LogSoftmax", "Pow", "Exp", "Log", "Sin", "Cos", "InstanceNormalization",
                    "Range", "CumSum", "ReduceLogSumExp", "ReduceSumSquare", "ReduceL2", "ReduceLogSum")
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceProd"}
# Exact in any float type (data movement, selection, sign): they follow their neighbours, so a cast
# lands on the cheaper side instead of around them.
NEUTRAL = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Concat", "Split", "Slice",
           "Gather", "GatherElements", "GatherND", "Tile", "Pad", "Identity", "Shape", "Size", "Cast",
           "DepthToSpace", "SpaceToDepth", "Where", "Dropout", "Trilu", "ScatterND", "ScatterElements",
           "Constant", "ConstantOfShape", "Relu", "Neg", "Abs", "Max", "Min", "ReduceMax", "ReduceMin",
           "MaxPool", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf", "Sign",
           "ArgMax", "ArgMin", "TopK", "NonZero"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Max", "Min", "Neg", "Abs", "Clip"}
# A backward walk from timestep sin/cos stops at these: beyond them lies the network, not the embedding.
HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention", "MultiHeadAttention", "Softmax",
         "LayerNormalization", "GroupNormalization", "RMSNormalization", "InstanceNormalization", "GroupNorm",
         "BatchNormalization"}
ATTR_TYPED_OK = {"Cast", "Constant", "ConstantOfShape"}  # outputs typed by an attribute materialize can set


@dataclass(frozen=True)
class TagPrecision(Pass):
    """Assign each float node a precision ("fp32" or the low dtype) in `node.precision`; nothing else
    changes (materialize-precision turns tags into types and casts).

    Rules, in priority order (the first that applies decides; `details` say which):
    - user: `force_fp32` / `force_low` regexes; a pattern matches a node whose op type it fully matches
      or whose name it is found in ("op:Softmax" / "name:up_blocks" restrict to one of the two);
    - structural: nodes with subgraphs and producers of tensors read inside subgraphs stay fp32; an op whose
      schema does not admit the low dtype at the graph's opset stays fp32 unless the default domain can
      be raised (materialize raises it), or `respect_schema=false`;
    - target: an op the compile target's backend has no kernel for in the low dtype stays fp32
      (`Target.low_kernels`: ORT's CUDA EP has no bf16 ReduceMean, Resize, Pad...; TVM no bf16
      layer_norm), whatever force_low says: the backend could not run it;
    - op rules: `keep_ops` (Softmax, Pow, Exp, Sin/Cos, InstanceNormalization, ...) plus `keep_extra`
      (added to the defaults, e.g. LayerNormalization for TVM, whose layer_norm has no bf16); reductions
      (ReduceMean/Sum...) over `reduce_extent` elements or more, or of unknown extent; decomposed
      normalizations (a ReduceMean/Sum whose statistic is combined back with its own input: LayerNorm /
      RMSNorm / GroupNorm written out as ReduceMean, Sub, Pow, Sqrt, Div, Reciprocal, Mul); Div by a
      constant of magnitude >= `threshold`; the inputs of timestep-embedding Sin/Cos back to the
      network inputs; fused norms with a `stash_type` stay low (their statistics are fp32 by stash_type);
    - magnitude (calibration): a node whose float inputs or outputs reach |x| > `threshold` in the fp32
      run, or that reads a constant beyond the low dtype's range, stays fp32. Calibration feeds:
      ctx.calibration, else the `inputs` .npz, else one synthetic N(0,1) feed when input shapes are
      static, else skipped (stats say which);
    - neutral ops (data movement, Relu, Max, comparisons) follow the precision of their producers (or,
      with none, their consumers), so casts land where the computation changes;
    - every other float node computes in the low dtype.
    """

    name = "tag-precision"
    lossy = True

    dtype: Literal["fp16", "bf16"] = "fp16"
    threshold: float = 512.0
    keep_ops: tuple[str, ...] = DEFAULT_KEEP_OPS
    keep_extra: tuple[str, ...] = ()
    force_fp32: tuple[str, ...] = ()
    force_low: tuple[str, ...] = ()
    calibrate: bool = True
    inputs: str = ""
    reduce_extent: int = 256
    norm_patterns: bool = True
    respect_schema: bool = True
    max_feeds: int = 4

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        low = LOW_DTYPES[self.dtype]
        if _missing_float_types(graph):
            from vidcc.onnx_io import infer_missing_types

            infer_missing_types(graph)
        user_fp32 = _patterns(self.force_fp32, "force_fp32")
        user_low = _patterns(self.force_low, "force_low")
        order = graph.toposort()
        floats = [n for n in order if _touches_float(graph, n)]
        decided: dict[int, tuple[str, str, str]] = {}  # node id -> (precision, rule, reason)
        neutral: list[Node] = []
        raise_to = 0

        rules = _OpRules(self, graph, order)
        amax, calib_note = self._calibration(graph, ctx)
        subgraph_reads = {t for n in order for t in n.implicit_inputs}

        for node in floats:
            hit = _match(user_fp32, node)
            if hit:
                decided[node.id] = ("fp32", "user", f"force_fp32 matches {hit!r}")
                continue
            blocked, opset_needed = self._structural(graph, node, low, subgraph_reads)
            rule = "schema"
            if not blocked:
                blocked, rule = kernel_gap(graph, node, ctx.target, self.dtype, opset_needed), "target"
            hit = _match(user_low, node)
            if hit and not blocked:
                decided[node.id] = (self.dtype, "user", f"force_low matches {hit!r}")
                raise_to = max(raise_to, opset_needed)
                continue
            if blocked:
                decided[node.id] = ("fp32", rule, blocked)
                continue
            why = rules.keep(node)
            if why:
                decided[node.id] = ("fp32",) + why
                continue
            why = _magnitude(graph, node, amax, self.threshold, low)
            if why:
                decided[node.id] = ("fp32", "magnitude", why)
                continue
            raise_to = max(raise_to, opset_needed)
            if node.op_type in NEUTRAL and node.domain in ("", "ai.onnx"):
                neutral.append(node)
                continue
            decided[node.id] = (self.dtype, "default", f"computes in {self.dtype}")

        _follow_neighbours(graph, neutral, decided, self.dtype)

        details, counts = [], {}
        for node in floats:
            prec, rule, reason = decided[node.id]
            old = node.precision
            node.precision = prec
            counts[prec] = counts.get(prec, 0) + 1
            if prec == "fp32":
                counts[f"fp32.{rule}"] = counts.get(f"fp32.{rule}", 0) + 1
            if old != prec:
                details.append({"kind": "precision", "node": node.name or node.label, "op": node.op_type,
                                "from": old or "fp32", "to": prec, "rule": rule, "reason": reason})
        if raise_to:
            graph.extra["vidcc.precision.opset"] = raise_to
        stats = {"dtype": self.dtype, **dict(sorted(counts.items())), "calibration": calib_note}
        if raise_to:
            stats["opset_needed"] = raise_to
        return PassResult(bool(details), stats, details)

    # ---- rules -------------------------------------------------------------------------------------
    def _structural(self, graph: Graph, node: Node, low: int, subgraph_reads: set[str]) -> tuple[str, int]:
        """(why the node cannot be low, '' if it can; the default-domain opset it needs, 0 if none)."""
        if node.has_subgraphs():
            return "has subgraphs (their bodies are not converted)", 0
        if any(o in subgraph_reads for o in node.outputs):
            return "its output is read inside a subgraph", 0
        b = node_binding(graph, node)
        float_params = {p for p, t in zip(b.inputs, node.inputs) if t and graph.type_of(t).dtype == T.FLOAT}
        float_params |= {p for p, t in zip(b.outputs, node.outputs) if t and graph.type_of(t).dtype == T.FLOAT}
        lowerable = {p for p in float_params if not p.startswith("=")}
        if node.op_type == "Cast" or node.op_type in ATTR_TYPED_OK or not lowerable:
            return "", 0
        # a free input parameter (Shape's T) takes any type: it does not block
        needed = {p for p in lowerable if not b.is_free(p)}
        refused = {p for p in needed if not b.allows(p, low)}
        if not refused or not self.respect_schema:
            return "", 0
        version = graph.opsets.get("", graph.opsets.get("ai.onnx", 0))
        later = first_opset_allowing(node.op_type, node.domain, refused, low, version)
        if later is not None:
            from vidcc.opsets import blocker

            why = blocker(graph, later)
            if why is None:
                return "", later
            return f"{node.op_type} takes {self.dtype} only from opset {later}, and {why}", 0
        return f"{node.op_type}'s schema (opset {version}) does not admit {self.dtype}", 0

    def _calibration(self, graph: Graph, ctx: PassContext) -> tuple[dict[str, float], str]:
        if not self.calibrate:
            return {}, "off"
        feeds, source = ctx.calibration, "ctx"
        if not feeds and self.inputs:
            try:
                with np.load(self.inputs) as data:
                    feeds, source = [{k: data[k] for k in data.files}], self.inputs
            except OSError as exc:
                raise SpecError(f"tag-precision: cannot read calibration inputs '{self.inputs}': {exc}") from None
        if not feeds:
            from vidcc.calibration import synthetic_feeds

            feeds, source = synthetic_feeds(graph), "synthetic N(0,1)"
        if not feeds:
            return {}, "skipped (no calibration inputs and input shapes not static)"
        from vidcc.calibration import amax

        feeds = list(feeds)[: self.max_feeds]
        return amax(graph, feeds), f"{len(feeds)} feed(s), {source}"


class _OpRules:
    """The op rules, with what they precompute over the whole graph (norm patterns, embeddings)."""

    def __init__(self, opts: TagPrecision, graph: Graph, order: list[Node]):
        self.opts, self.graph = opts, graph
        self.keep_ops = set(opts.keep_ops) | set(opts.keep_extra)
        self.norm_nodes = _norm_pattern_nodes(graph, order) if opts.norm_patterns else {}
        self.embedding = _timestep_embedding_nodes(graph) if {"Sin", "Cos"} & self.keep_ops else {}

    def keep(self, node: Node) -> tuple[str, str] | None:
        g = self.graph
        if node.id in self.norm_nodes:
            return "norm-pattern", self.norm_nodes[node.id]
        if node.op_type in self.keep_ops:
            return "op-rule", f"{node.op_type} accumulates or overflows in low precision"
        if node.id in self.embedding:
            return "op-rule", self.embedding[node.id]
        if node.op_type in REDUCTIONS:
            extent = _reduce_extent(g, node)
            if extent is None:
                return "op-rule", f"{node.op_type} over an extent not known statically"
            if extent >= self.opts.reduce_extent:
                return "op-rule", f"{node.op_type} over {extent} elements (>= {self.opts.reduce_extent})"
        if node.op_type == "Div" and len(node.inputs) > 1:
            c = g.constant(node.inputs[1])
            if c is not None and c.size and np.issubdtype(c.dtype, np.floating):
                m = float(np.max(np.abs(c)))
                if m >= self.opts.threshold:
                    return "op-rule", f"Div by a constant of magnitude {m:g} (>= {self.opts.threshold:g})"
        return None


# ---- helpers --------------------------------------------------------------------------------------
def kernel_gap(graph: Graph, node: Node, target, dtype: str, opset_needed: int) -> str:
    """Why the target's backend cannot compute the node in `dtype` ('' when it can, or without a target)."""
    computes = getattr(target, "computes", None)
    if computes is None:
        return ""
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = graph.opsets.get(domain, graph.opsets.get("ai.onnx", 1) if domain == "" else 1)
    if domain == "":
        version = max(version, opset_needed)  # materialize raises the opset for it
    if computes(node.op_type, domain, dtype, version):
        return ""
    table = target.low_kernels.get(dtype)
    where = f" at opset {version}" if domain == "" else f" ({domain})"
    return f"{target.name} has no {dtype} kernel for {node.op_type}{where}" + (f": {table.source}" if table.source else "")


def _missing_float_types(graph: Graph) -> bool:
    return any(o and not graph.type_of(o).dtype for n in graph.nodes for o in n.outputs)


def _touches_float(graph: Graph, node: Node) -> bool:
    return any(t and graph.type_of(t).dtype == T.FLOAT for t in list(node.inputs) + list(node.outputs))


def _patterns(items, option: str) -> list[tuple[str, str, re.Pattern]]:
    out = []
    for item in items:
        where, _, pat = item.partition(":") if item.startswith(("op:", "name:")) else ("", "", item)
        try:
            out.append((item, where, re.compile(pat)))
        except re.error as exc:
            raise SpecError(f"tag-precision: {option} pattern {item!r} is not a regex: {exc}") from None
    return out


def _match(patterns, node: Node) -> str | None:
    for item, where, rx in patterns:
        if where in ("", "op") and rx.fullmatch(node.op_type):
            return item
        if where in ("", "name") and node.name and rx.search(node.name):
            return item
    return None


def _magnitude(graph: Graph, node: Node, amax: dict[str, float], threshold: float, low: int) -> str | None:
    limit = MAX_FINITE[low]
    for t in node.inputs:
        c = graph.constants.get(t) if t else None
        if c is not None and c.dtype == T.FLOAT and c.size:
            arr = c.array
            m = float(np.max(np.abs(arr[np.isfinite(arr)]))) if np.isfinite(arr).any() else 0.0
            if m > limit:
                return f"constant '{t}' reaches {m:g}, beyond {NAMES[low]}'s range"
    if not amax:
        return None
    for t in list(node.inputs) + list(node.outputs):
        m = amax.get(t) if t else None
        if m is not None and m > threshold:
            return f"'{t}' reaches |x| = {m:g} in calibration (> {threshold:g})"
    return None


def _reduce_extent(graph: Graph, node: Node) -> int | None:
    shape = graph.type_of(node.inputs[0]).shape
    if shape is None:
        return None
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        c = graph.constant(node.inputs[1])
        if c is None:
            return None
        axes = [int(a) for a in np.asarray(c).reshape(-1)]
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return 1
        axes = list(range(len(shape)))
    extent = 1
    for a in axes:
        d = shape[a % len(shape)] if shape else 1
        if not isinstance(d, int):
            return None
        extent *= d
    return extent


def _norm_pattern_nodes(graph: Graph, order: list[Node]) -> dict[int, str]:
    """Nodes of decomposed normalizations: a mean/sum reduction R of x, the chain of statistic
    tensors derived from R (Add eps, Sqrt, Reciprocal, Mul of statistics...), and the elementwise node
    that combines a statistic back with x (or x - mean): Sub(x, mean), Div(d, std), Mul(x, rstd)."""
    seeds = [n for n in order if n.op_type in ("ReduceMean", "ReduceSum", "ReduceSumSquare")]
    if not seeds:
        return {}
    stat_of: dict[str, set[int]] = {}  # statistic tensor -> reductions it derives from
    chain: dict[int, set[int]] = {s.id: {s.id} for s in seeds}  # reduction -> nodes of its statistic chain
    for s in seeds:
        stat_of[s.outputs[0]] = {s.id}
    roots = {s.id: _roots(graph, s.inputs[0]) for s in seeds}
    found: dict[int, str] = {}
    seed_ids = {s.id for s in seeds}
    for n in order:
        if n.id in seed_ids or n.op_type not in ELEMENTWISE | NEUTRAL:
            continue
        float_ins = [t for t in n.inputs if t and graph.type_of(t).dtype == T.FLOAT]
        stats = [t for t in float_ins if t in stat_of]
        if not stats:
            continue
        others = [t for t in float_ins if t not in stat_of and not graph.is_constant(t)]
        derived = set().union(*(stat_of[t] for t in stats))
        if not others:
            for o in n.outputs:
                if o:
                    stat_of[o] = derived
            for r in derived:
                chain[r].add(n.id)
            continue
        if n.op_type not in ("Sub", "Div", "Mul"):
            continue
        for r in derived:
            hits = [t for t in others if t in roots[r][0] or _reads_any(graph, t, roots[r][0])]
            if not hits:
                continue
            why = "normalization statistics (decomposed norm: reduction, statistic chain, normalize)"
            for nid in chain[r] | {n.id} | roots[r][1]:
                found[nid] = why
            for t in hits:
                p = graph.producer(t)
                if p is not None and t not in roots[r][0]:
                    found[p.id] = why
    return found


def _roots(graph: Graph, x: str) -> tuple[set[str], set[int]]:
    """What a reduction normalizes: its input, and through a square (Pow(y,2), Mul(y,y)) or a centering
    Sub(y, mean), the tensor before; plus the nodes passed on the way."""
    tensors, nodes = {x}, set()
    cur = x
    for _ in range(2):
        p = graph.producer(cur)
        if p is None or p.op_type not in ("Pow", "Mul", "Sub") or not p.inputs:
            break
        if p.op_type == "Mul" and p.inputs[0] != p.inputs[1]:
            break
        nodes.add(p.id)
        cur = p.inputs[0]
        tensors.add(cur)
    return tensors, nodes


def _reads_any(graph: Graph, t: str, tensors: set[str]) -> bool:
    p = graph.producer(t)
    return p is not None and p.op_type in ELEMENTWISE and any(i in tensors for i in p.inputs)


def _timestep_embedding_nodes(graph: Graph, depth: int = 12) -> dict[int, str]:
    """Sin/Cos and what feeds them back to the network inputs: sin(t * freq) with t up to 1000 has no
    meaningful digits left in fp16."""
    found: dict[int, str] = {}
    for trig in graph.nodes_by_op("Sin") + graph.nodes_by_op("Cos"):
        frontier, seen = [(trig, 0)], set()
        while frontier:
            node, d = frontier.pop()
            if node.id in seen or d > depth:
                continue
            seen.add(node.id)
            if node is not trig:
                found[node.id] = f"feeds the sin/cos embedding at {trig.name or trig.label}"
            for t in node.inputs:
                p = graph.producer(t) if t else None
                if p is not None and p.op_type not in HEAVY and not p.has_subgraphs():
                    frontier.append((p, d + 1))
    return found


def _follow_neighbours(graph: Graph, neutral: list[Node], decided: dict, low_name: str) -> None:
    """Neutral nodes take their producers' precision (majority, ties low); with no tagged producer
    (constants, graph inputs), their consumers'."""
    pending = []
    for node in neutral:  # topological order
        votes = [decided[p.id][0] for t in node.inputs if t and graph.type_of(t).dtype in (T.FLOAT,)
                 for p in [graph.producer(t)] if p is not None and p.id in decided]
        if votes:
            prec = "fp32" if votes.count("fp32") > len(votes) - votes.count("fp32") else low_name
            decided[node.id] = (prec, "neutral", f"follows its producers ({prec})")
        else:
            pending.append(node)
    for node in reversed(pending):
        votes = [decided[c.id][0] for o in node.outputs if o for c in graph.consumer_nodes(o) if c.id in decided]
        prec = "fp32" if votes and votes.count("fp32") > len(votes) - votes.count("fp32") else low_name
        decided[node.id] = (prec, "neutral", f"follows its consumers ({prec})" if votes else f"no tagged neighbour ({prec})")


PASSES = [TagPrecision]

"""fold-channels: physically remove channels that do not contribute (exact)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcc.channel_edit import Removal, apply_removal, empty_tensors, replace_input
from vidcc.channels import Analysis, const_value
from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult


def sample_feeds(graph: Graph, ctx: PassContext | None) -> dict[str, np.ndarray] | None:
    """Inputs to prove reshapes with (and to measure on): the first calibration feed, else seeded
    random inputs when every graph input has a static shape, else None."""
    if ctx is not None and ctx.calibration:
        return dict(ctx.calibration[0])
    rng = np.random.default_rng(0)
    feeds = {}
    for name in graph.inputs:
        if graph.is_constant(name):
            continue
        t = graph.type_of(name)
        if t.shape is None or not all(isinstance(d, int) for d in t.shape) or not t.dtype:
            return None
        dtype = t.np_dtype
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(t.shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = np.zeros(t.shape, dtype)
        else:
            feeds[name] = np.zeros(t.shape, dtype)
    return feeds


@dataclass
class FoldPlan:
    removed: set[int]
    biases: list[tuple[str, int, np.ndarray, int | None]]  # (kind, node id, full delta, bias Add id)
    refused: dict[int, str]  # root -> why it stays


def plan_fold(an: Analysis, exact: bool = True) -> FoldPlan:
    """Which classes can go, and the bias corrections for channels that are constant."""
    g = an.graph
    roots = an.uf.roots
    candidates: set[int] = set()
    for _, _, ids in an.producers:
        candidates.update(np.unique(roots[ids]).tolist())
    refused: dict[int, str] = {}
    for r in list(candidates):
        if r in an.blocked:
            refused[r] = an.blocked[r][0]
    # a class is "dead" when every channel its producers write is 0
    dead_bad: set[int] = set()
    seen_dead: set[int] = set()
    for nid, tensor, ids in an.producers:
        s = an.state_of(tensor).reshape(-1) if tensor in an.state else np.full(ids.size, np.nan)
        r = roots[ids]
        dead_bad.update(np.unique(r[s != 0]).tolist())  # NaN != 0 too
        seen_dead.update(np.unique(r).tolist())
    dead = seen_dead - dead_bad

    def refuse(rs, why):
        for r in np.unique(rs).tolist():
            if r in candidates and r not in refused and not (not exact and r in dead):
                refused[r] = why

    folds: list[tuple] = []
    for sink in an.sinks:
        node = g.node(sink.node)
        r = roots[sink.ids].reshape(-1)
        s = an.state_of(sink.tensor).reshape(-1)
        if sink.kind == "weight":
            w = const_value(g, node.inputs[sink.slot])
            wz = ~np.moveaxis(w, sink.waxis, 0).reshape(w.shape[sink.waxis], -1).any(axis=1)
            zero = (s == 0) | wz
            const = ~np.isnan(s) & ~zero
            refuse(r[~zero & ~const], f"its channels reach {node.label} with non-constant values")
            if const.any():
                if sink.fold is None:
                    refuse(r[const], f"constant channels cannot fold into {node.label} (padding)")
                else:
                    folds.append((sink, node, r, s, const, w))
        elif sink.kind == "dyn":
            so = an.state_of(sink.other).reshape(-1)
            ro = roots[sink.other_ids].reshape(-1)
            live_a = set(np.unique(r[s != 0]).tolist())
            live_b = set(np.unique(ro[so != 0]).tolist())
            refuse(np.array(sorted(live_a & live_b), dtype=np.int64), f"contracted with live channels at {node.label}")
        elif sink.kind == "sum":
            refuse(r[s != 0], f"summed over at {node.label} with non-zero values")
        else:
            refuse(r, f"{sink.reason} at {node.label} change (exact mode)")
    if exact:
        for r, reasons in an.lossy_reasons.items():
            if r in candidates and r not in refused:
                refused[r] = reasons[0]
    # bias corrections: value v of a removed constant channel times its weights; a class whose
    # constant cannot fold anywhere stays, which may change other corrections: repeat until stable
    while True:
        removed = candidates - set(refused)
        biases, changed = [], False
        for sink, node, r, s, const, w in folds:
            gone = np.isin(r, list(removed)) & const
            if not gone.any():
                continue
            delta = _bias_delta(g, sink, node, w, np.where(gone, s, 0.0))
            if delta is None:
                for rr in np.unique(r[gone]).tolist():
                    refused[rr] = f"constant channels cannot fold into {node.label} (no bias to fold into)"
                changed = True
                continue
            biases.append(delta)
        if not changed:
            return FoldPlan(removed, biases, refused)


def _bias_delta(g: Graph, sink, node, w: np.ndarray, v: np.ndarray):
    """(kind, node id, delta over the consumer's output channels, bias Add id or None)."""
    if sink.fold == "conv":
        per_in = np.moveaxis(w, 1, -1).reshape(w.shape[0], -1, w.shape[1]).sum(axis=1)  # [O, C]
        return ("conv", node.id, per_in.astype(np.float64) @ v, None)
    if sink.fold == "gemm":
        wk = w.T if node.attr("transB", 0) else w  # [K, N]
        beta = node.attr("beta", 1.0)
        if beta == 0:
            return None
        return ("gemm", node.id, node.attr("alpha", 1.0) * (v @ wk.astype(np.float64)) / beta, None)
    if sink.fold == "matmul":
        out = node.outputs[0]
        users = g.consumers(out)
        if len(users) != 1 or out in g.outputs:
            return None
        add, slot = users[0]
        if add.op_type != "Add":
            return None
        bias = const_value(g, add.inputs[1 - slot])
        if bias is None or bias.shape[-1:] != (w.shape[1],) or bias.size != w.shape[1]:
            return None
        return ("matmul", node.id, v @ w.astype(np.float64), add.id)
    return None


def apply_fold(graph: Graph, an: Analysis, plan: FoldPlan) -> dict:
    """Remove the planned classes and add the bias corrections (computed on the full weights, added
    to what remains of each bias)."""
    removed = set(plan.removed)
    rm = Removal(an, removed)
    for t in empty_tensors(an, rm):  # never leave a tensor without channels: keep one class
        info = an.info[t]
        removed.discard(int(an.uf.roots[info.ids.reshape(-1)[0]]))
        rm = Removal(an, removed)
    counts = apply_removal(graph, an, removed) if removed else {}
    out_ids = {nid: ids for nid, _, ids in an.producers}
    for kind, nid, delta, add_id in plan.biases:
        node = graph.node(nid)
        keep = rm.keep(out_ids[nid]) if nid in out_ids else np.ones(delta.size, bool)
        d = delta[keep]
        if kind in ("conv", "gemm"):
            slot = 2
            if len(node.inputs) > slot and node.inputs[slot]:
                old = const_value(graph, node.inputs[slot])
                replace_input(graph, node, slot, (old.astype(np.float64) + d.reshape((1,) * (old.ndim - 1) + (-1,)) if old.ndim else old + d).astype(old.dtype))
            else:
                dtype = const_value(graph, node.inputs[1]).dtype
                name = graph.add_constant(d.astype(dtype), (node.name or node.op_type) + "_folded_bias")
                graph.set_inputs(node, list(node.inputs) + [""] * (2 - len(node.inputs)) + [name])
        else:
            add = graph.node(add_id)
            slot = 1 if add.inputs[0] == node.outputs[0] else 0
            old = const_value(graph, add.inputs[slot])
            replace_input(graph, add, slot, (old.astype(np.float64) + d.reshape(old.shape)).astype(old.dtype))
        counts["bias_folds"] = counts.get("bias_folds", 0) + 1
    graph.remove_unused_constants()
    _drop_dead(graph)
    return {"removed": removed, **counts}


def _drop_dead(graph: Graph) -> None:
    from .dce import DeadCodeElimination

    DeadCodeElimination().run(graph, PassContext())


def layer_channels(an: Analysis, names: dict[int, tuple[str, str]], removed: set[int]) -> list[dict]:
    """Per producing layer: output channels before and after (names taken before any edit: a dead
    producer may be gone afterwards)."""
    rm = Removal(an, removed)
    return [{"node": names[nid][0], "op": names[nid][1], "channels": [int(ids.size), int(rm.keep(ids).sum())]}
            for nid, _, ids in an.producers]


def shrunk_shapes(an: Analysis, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Sample shapes after a removal: each channel tensor's channel dims replaced by what is left."""
    out = dict(shapes)
    for t, dims in getattr(an, "new_dims", {}).items():
        if t in out:
            s = list(out[t])
            for a, d in zip(an.info[t].axes, dims):
                s[a] = d
            out[t] = tuple(s)
    return out


def fold(graph: Graph, feeds=None, *, exact: bool = True, shapes=None, analysis_out: list | None = None) -> PassResult:
    an = Analysis(graph, feeds, values=True, shapes=shapes)
    if analysis_out is not None:
        analysis_out.append(an)
    plan = plan_fold(an, exact)
    if not plan.removed:
        details = _refusals(an, graph, plan)
        return PassResult(False, {"channels_removed": 0, "refused_groups": len(details)}, details)
    names = {nid: (graph.node(nid).name or graph.node(nid).label, graph.node(nid).op_type) for nid, _, _ in an.producers}
    before = layer_channels(an, names, set())
    counts = apply_fold(graph, an, plan)
    removed = counts.pop("removed")
    after = layer_channels(an, names, removed)
    details = [{"kind": "folded", "node": a["node"], "op": a["op"], "channels": [b["channels"][0], a["channels"][1]],
                "reason": "producing weights are zero" if a["channels"][1] < b["channels"][0] else ""}
               for b, a in zip(before, after) if a["channels"][1] != b["channels"][0]]
    total_before = sum(b["channels"][0] for b in before)
    total_after = sum(a["channels"][1] for a in after)
    stats = {"layers": len(details), "channels": f"{total_before} -> {total_after}",
             "channels_removed": total_before - total_after, "classes_removed": len(removed), **counts}
    return PassResult(bool(details) or bool(counts), stats, details + _refusals(an, graph, plan, limit=20))


def _refusals(an: Analysis, graph: Graph, plan: FoldPlan, limit: int = 50) -> list[dict]:
    """One explain event per producing layer whose channels had to stay, with the first reason."""
    out = []
    roots = an.uf.roots
    for nid, _, ids in an.producers:
        rs = np.unique(roots[ids]).tolist()
        why = [plan.refused[r] for r in rs if r in plan.refused and r in an.blocked]
        if why and nid in graph.nx:
            out.append({"kind": "refused", "group": graph.node(nid).name or graph.node(nid).label, "reason": why[0]})
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class FoldChannels(Pass):
    """Remove channels that cannot change the result, with every coupled tensor.

    Rewrite cases:
    - a class of coupled channels (through residual Adds, Concat/Split/Slice, GroupNorm groups,
      attention heads, depthwise and temporal convs, Resize/Pad/pooling, per-channel constants,
      timestep-embedding projections) whose value is 0 wherever it is reduced (a consumer Conv/
      Gemm/MatMul, a dynamic contraction, a ReduceSum) is removed: producing weight rows and biases,
      per-channel constants, consumer weight columns, Reshape targets, Split sizes, Slice bounds,
      num_groups / group / num_heads and tensor shapes all shrink together;
    - a channel that is constant (bias only, also after elementwise ops, norms and activations)
      is removed and folded into the consumer's bias: a Gemm, a MatMul followed by its bias Add, or
      a Conv without padding (padding makes the contribution position-dependent: refused);
    - refused with a reason: classes that reach a graph output, pass an op not in the channel table,
      a Reshape whose channel mapping cannot be proven, LayerNorm/RMSNorm/ReduceMean statistics
      (exact=false removes classes whose producers are all zero even there, changing the result).
    Sample inputs (ctx.calibration, or random inputs for static graphs) prove reshapes of graphs with
    dynamic axes; run `cleanup` first so computed Slice bounds and shapes become constants.
    """

    name = "fold-channels"
    exact: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return fold(graph, sample_feeds(graph, ctx), exact=self.exact)


PASSES = [FoldChannels]

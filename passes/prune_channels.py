"""prune-channels: structured pruning of coupled channel groups (lossy), physically folded away."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vidcc.channel_edit import Removal, replace_input
from vidcc.channels import ADD, CONSUMER, PRODUCER, Analysis, const_value, runtime_shapes
from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult

from .fold_channels import fold, sample_feeds, shrunk_shapes

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ---- groups and their classes ------------------------------------------------------------------------
@dataclass
class Group:
    classes: list[int]  # class roots
    producers: list[int]  # producing node ids
    counts: dict[int, dict[int, int]]  # producer node -> class -> number of its channels there

    def unit(self) -> dict[int, int] | None:
        """Channels per class in each producer when every class has the same count there."""
        units = {}
        for nid, per in self.counts.items():
            values = {per.get(c, 0) for c in self.classes}
            if len(values) != 1 or 0 in values:
                return None
            units[nid] = values.pop()
        return units


def coupled_groups(an: Analysis) -> list[Group]:
    """Classes that share a producer's output belong to one group (a residual stream, a resnet's
    inner width, an attention block's heads, a feed-forward's hidden width)."""
    roots = an.uf.roots
    parent: dict[int, int] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    counts: dict[int, dict[int, int]] = {}
    for nid, _, ids in an.producers:
        rs, n = np.unique(roots[ids], return_counts=True)
        counts[nid] = dict(zip(rs.tolist(), n.tolist()))
        for r in rs.tolist()[1:]:
            a, b = find(int(rs[0])), find(r)
            if a != b:
                parent[b] = a
        find(int(rs[0]))
    members: dict[int, list[int]] = defaultdict(list)
    for r in parent:
        members[find(r)].append(r)
    prods: dict[int, list[int]] = defaultdict(list)
    for nid, per in counts.items():
        prods[find(next(iter(per)))].append(nid)
    return [Group(sorted(members[g]), prods[g], {n: counts[n] for n in prods[g]}) for g in members]


# ---- importance -------------------------------------------------------------------------------------
def _norms(w: np.ndarray, axis: int, p: str) -> np.ndarray:
    m = np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(m).sum(axis=1) if p == "l1" else np.sqrt((m * m).sum(axis=1))


def importance(an: Analysis, criterion: str, activations: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Score per channel id: each weight's per-channel norm, normalized by that weight's mean so
    small and large layers weigh alike, summed over every weight a channel touches (its producers'
    rows and its consumers' columns). taylor: each consumer's column norm times the channel's mean
    |activation| on the calibration inputs — the first-order change of that consumer's output when
    the channel is removed."""
    g = an.graph
    score = np.zeros(len(an.uf.parent))
    norm = "l1" if criterion == "l1" else "l2"
    sites = [s for s in an.const_sites if s.role in (PRODUCER, CONSUMER)]
    if criterion == "taylor":
        sites = [s for s in sites if s.role == CONSUMER]
    sink_input = {(s.node, s.slot): s.tensor for s in an.sinks if s.kind == "weight"}
    for site in sites:
        node = g.node(site.node)
        w = const_value(g, node.inputs[site.slot])
        if w is None or w.dtype.kind != "f":
            continue
        v = _norms(w, site.axis, norm)
        if criterion == "taylor":
            act = (activations or {}).get(sink_input.get((site.node, site.slot)))
            if act is None or act.shape != v.shape:
                continue
            v = v * act
        mean = float(v.mean())
        if mean > 0:
            np.add.at(score, site.pos_ids, (v / mean)[:, None])
    return score


def mean_abs_activations(graph: Graph, an: Analysis, feeds_list: list[dict]) -> dict[str, np.ndarray]:
    """Mean |x| per channel of every tensor a weight consumes, over the calibration feeds (one
    ORT session; tensors fetched a few at a time so activations are never all held at once)."""
    import onnxruntime as ort

    from vidcc import onnx_io

    wanted = {s.tensor: an.info[s.tensor].axes[0] for s in an.sinks if s.kind == "weight" and s.tensor in an.info}
    names = [t for t in wanted if t not in graph.inputs and graph.producer(t) is not None]
    if not names:
        return {}
    g = graph.copy()
    g.outputs = list(graph.outputs) + [n for n in names if n not in graph.outputs]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_io.to_proto(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    for feeds in feeds_list:
        feeds = {k: v for k, v in feeds.items() if k in inputs}
        for start in range(0, len(names), 32):
            chunk = names[start:start + 32]
            for name, value in zip(chunk, sess.run(chunk, feeds)):
                axis = wanted[name]
                other = tuple(i for i in range(value.ndim) if i != axis)
                m = np.abs(value.astype(np.float64)).mean(axis=other)
                sums[name] = sums.get(name, 0) + m
    return {k: v / len(feeds_list) for k, v in sums.items()}


# ---- selection --------------------------------------------------------------------------------------
def select(an: Analysis, groups: list[Group], score: np.ndarray, *, ratio: float, round_to: int,
           allowed: set[int], head_rounding: str = "up") -> tuple[set[int], list[dict]]:
    """Per group, the least important `ratio` of its classes among the allowed ones, keeping each
    producer's channel count a multiple of round_to where the classes are uniform. A group of
    attention heads rounds its count up (head_rounding="up"): see _keep."""
    roots = an.uf.roots
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots.tolist()):
        members[r].append(i)
    chosen: set[int] = set()
    notes = []
    for grp in groups:
        cands = [c for c in grp.classes if c in allowed]
        if not cands:
            continue
        cls_score = {c: float(score[members[c]].mean()) for c in cands}
        n = len(grp.classes)
        units = grp.unit()
        if units is not None:
            step = 1
            for u in units.values():
                need = round_to // math.gcd(round_to, u)
                step = step * need // math.gcd(step, need)
            target = n * (1 - ratio)
            floor_keep = n - len(cands)
            options = [k for k in range(max(1, floor_keep), n + 1) if k % step == 0 or k == n]
            aligned = [k for k in options if k % step == 0 and k < n]
            if not aligned:  # no aligned width below the full one: prune by ratio alone
                options = list(range(max(1, floor_keep), n + 1))
                notes.append({"kind": "note", "group": _group_name(an, grp),
                              "reason": f"round_to={round_to} not reachable with {n} classes of {sorted(set(units.values()))}"})
            heads = head_rounding == "up" and all("head" in an.tags.get(c, ()) for c in cands)
            keep = _keep(options, target, up=heads)
            n_remove = n - keep
        else:
            n_remove, aligned, width = _unequal(grp, sorted(cands, key=lambda c: cls_score[c]), ratio, round_to)
            if aligned < width:
                notes.append({"kind": "note", "group": _group_name(an, grp),
                              "reason": f"classes of unequal size (GroupNorm groups across a Concat): {aligned} of "
                                        f"{width} producers kept a multiple of round_to={round_to}"})
        if n_remove <= 0:
            continue
        chosen.update(sorted(cands, key=lambda c: cls_score[c])[:n_remove])
    return chosen, notes


def _keep(options: list[int], target: float, *, up: bool) -> int:
    """The number of classes to keep: the option nearest `target`, or with up=True the largest one
    not above it (at least `ratio` removed). Heads round up because attention's own cost (QK^T,
    softmax, AV: heads x tokens^2) only falls by whole heads, and a block has few of them: nearest
    would keep 3 of 4 heads at ratio 0.3, leaving three quarters of that cost."""
    if up:
        below = [k for k in options if k <= target + 1e-9]
        if below:
            return max(below)
    return min(options, key=lambda k: (abs(k - target), k))


def _unequal(grp: Group, order: list[int], ratio: float, round_to: int) -> tuple[int, int, int]:
    """How many of the ranked classes to remove from a group whose classes differ in size: near
    `ratio` of its channels (within 10%), as many producers as possible left a multiple of round_to.
    Returns (count, aligned producers, producers)."""
    weight = {c: sum(grp.counts[p].get(c, 0) for p in grp.producers) for c in grp.classes}
    total = sum(weight.values())
    kept = {p: sum(grp.counts[p].values()) for p in grp.producers}
    best, removed = (0, -1, float("inf")), 0.0
    for n in range(0, len(order) + 1):
        if n:
            c = order[n - 1]
            removed += weight[c]
            for p in grp.producers:
                kept[p] -= grp.counts[p].get(c, 0)
            if min(kept.values()) <= 0:
                break
        off = abs(removed - ratio * total)
        if n and off > 0.1 * total and removed > ratio * total:
            break
        if off <= 0.1 * total or n == 0:
            aligned = sum(1 for k in kept.values() if k % round_to == 0)
            if (aligned, -off) > (best[1], -best[2]) and (n or ratio == 0):
                best = (n, aligned, off)
    return best[0], max(best[1], 0), len(grp.producers)


def _group_name(an: Analysis, grp: Group) -> str:
    node = an.graph.node(grp.producers[0])
    more = f" (+{len(grp.producers) - 1} coupled)" if len(grp.producers) > 1 else ""
    return (node.name or node.label) + more


def zero_classes(graph: Graph, an: Analysis, chosen: set[int]) -> int:
    """Zero what writes the chosen channels: producer weight rows, biases and every additive
    per-channel constant along their path (norm betas, shift tables), as a pruning mask would."""
    rm = Removal(an, chosen)
    cuts: dict[tuple[int, int], list] = defaultdict(list)
    for site in an.const_sites:
        if site.role not in (PRODUCER, ADD):
            continue
        z = rm.gone[site.pos_ids].all(axis=1)
        if z.any():
            cuts[(site.node, site.slot)].append((site.axis, z))
    for (nid, slot), parts in cuts.items():
        node = graph.node(nid)
        arr = np.array(const_value(graph, node.inputs[slot]), copy=True)
        for axis, z in parts:
            index = [slice(None)] * arr.ndim
            index[axis] = z
            arr[tuple(index)] = 0
        replace_input(graph, node, slot, arr)
    return len(cuts)


# ---- reporting --------------------------------------------------------------------------------------
def layer_costs(g: Graph) -> dict[int, dict]:
    """Per weight-carrying node: channels in/out, parameters and MACs (g typed with sample shapes)."""
    from vidcc.stats import node_macs

    rows = {}
    for node in g.nodes:
        if node.op_type not in WEIGHT_OPS or len(node.inputs) < 2:
            continue
        w = g.constants.get(node.inputs[1])
        if w is None:
            continue
        params = sum(g.constants[t].size for t in node.inputs[1:] if t in g.constants)
        if node.op_type in ("Conv", "ConvTranspose"):
            cin = w.shape[1] * node.attr("group", 1) if node.op_type == "Conv" else w.shape[0]
            cout = w.shape[0] if node.op_type == "Conv" else w.shape[1] * node.attr("group", 1)
        elif node.op_type == "Gemm":
            cin, cout = (w.shape[1], w.shape[0]) if node.attr("transB", 0) else (w.shape[0], w.shape[1])
        else:
            cin, cout = (w.shape[0], w.shape[1]) if len(w.shape) == 2 else (w.shape[-2], w.shape[-1])
        rows[node.id] = {"node": node.name or node.label, "op": node.op_type, "in": int(cin), "out": int(cout),
                         "params": int(params), "macs": node_macs(g, node)}
    return rows


def _with_shapes(graph: Graph, shapes: dict[str, tuple]) -> Graph:
    from vidcc.ir import TensorType

    g = graph.copy()
    for t, s in shapes.items():
        g.types[t] = TensorType(g.type_of(t).dtype, tuple(s))
    return g


def totals(g: Graph) -> dict[str, int]:
    from vidcc.stats import summarize

    s = summarize(g)
    return {"params": s["params"], "weight_bytes": s["weight_bytes"], "macs": s["macs"]}


def compare(before: bytes, after: Graph, feeds: dict) -> dict[str, float]:
    """Cosine and PSNR of the pruned graph's outputs against the unpruned one's (worst output)."""
    import onnxruntime as ort

    from vidcc import onnx_io
    from vidcc.verification import metrics

    so = ort.SessionOptions()
    so.log_severity_level = 3

    def run(model):
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        return dict(zip([o.name for o in sess.get_outputs()], outs))

    ref, got = run(before), run(onnx_io.to_proto(after).SerializeToString())
    ms = [metrics(k, got[k], ref[k]) for k in ref if k in got]
    worst = min(ms, key=lambda m: m.cosine)
    return {"cosine": round(worst.cosine, 6), "psnr_db": round(worst.psnr_db, 2) if math.isfinite(worst.psnr_db) else worst.psnr_db}


def _pct(a: int, b: int) -> str:
    return f"{a} -> {b} (-{100 * (a - b) / a:.1f}%)" if a else f"{a} -> {b}"


# ---- the pass ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Structured channel pruning (lossy): rank the channels of every coupled group, zero the least
    important `ratio` of them, and fold them away.

    Rewrite cases:
    - each coupled group (a residual stream with its GroupNorms, a resnet's inner width with its
      timestep projection, attention heads, a feed-forward's hidden width, temporal convs...) loses
      the lowest-ranked `ratio` of its classes — a class is a channel, or a whole GroupNorm group,
      or a whole attention head where the structure couples them — keeping every producer's width a
      multiple of `round_to` when the classes allow it; their producing weights, biases and
      additive per-channel constants are zeroed (the mask a PyTorch pruner would leave), then
      fold-channels removes them (exact=false: also through LayerNorm/RMSNorm statistics);
    - criterion: l1 / l2 = per-channel weight norms of every producer row and consumer column,
      each layer normalized by its mean; taylor = each consumer's column norm times the channel's
      mean |activation| on the calibration inputs (ctx.calibration, else the sample inputs);
    - granularity: channel = every prunable class; group = only classes that are GroupNorm groups
      (conv feature maps); head = only attention heads;
    - head_rounding: up (default) = a group of attention heads loses at least `ratio` of its heads
      (2 of 4 at 0.3): attention's cost (heads x tokens^2) only falls by whole heads, and with a
      handful of heads per block the nearest count would leave most of it; nearest = like the rest;
    - norms=false leaves classes coupled through LayerNorm/RMSNorm statistics alone;
    - classes the analysis cannot prove (graph outputs, unknown ops, unprovable reshapes) stay, with
      the reason in the details.
    Reports per layer and in total: channels, parameters, weight bytes, MACs before and after, and
    the pruned graph's output cosine / PSNR against the unpruned graph on the sample inputs.
    """

    name = "prune-channels"
    lossy = True
    ratio: float = 0.3
    criterion: Literal["l1", "l2", "taylor"] = "l1"
    granularity: Literal["channel", "group", "head"] = "channel"
    round_to: int = 8
    head_rounding: Literal["up", "nearest"] = "up"
    norms: bool = True
    measure: bool = True

    def __post_init__(self):
        if not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.criterion not in ("l1", "l2", "taylor"):
            raise ValueError(f"criterion must be l1, l2 or taylor, got {self.criterion!r}")
        if self.granularity not in ("channel", "group", "head"):
            raise ValueError(f"granularity must be channel, group or head, got {self.granularity!r}")
        if self.head_rounding not in ("up", "nearest"):
            raise ValueError(f"head_rounding must be up or nearest, got {self.head_rounding!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        feeds = sample_feeds(graph, ctx)
        shapes = runtime_shapes(graph, feeds) if feeds else None
        an = Analysis(graph, shapes=shapes)
        groups = coupled_groups(an)
        allowed = set()
        for grp in groups:
            for c in grp.classes:
                if c in an.blocked or (not self.norms and c in an.lossy_reasons):
                    continue
                if self.granularity == "group" and "groupnorm" not in an.tags.get(c, ()):
                    continue
                if self.granularity == "head" and "head" not in an.tags.get(c, ()):
                    continue
                allowed.add(c)
        acts = None
        if self.criterion == "taylor":
            if not feeds:
                raise ValueError("criterion=taylor needs calibration inputs (ctx.calibration) or a graph with static input shapes")
            acts = mean_abs_activations(graph, an, list(ctx.calibration or [feeds]))
        score = importance(an, self.criterion, acts)
        chosen, notes = select(an, groups, score, ratio=self.ratio, round_to=self.round_to, allowed=allowed,
                               head_rounding=self.head_rounding)
        refused = _refused_groups(an, groups)
        if not chosen:
            return PassResult(False, {"groups": f"0/{len(groups)}", "refused_groups": len(refused)}, refused + notes)

        from vidcc import onnx_io

        before_model = onnx_io.to_proto(graph).SerializeToString() if self.measure and feeds else None
        typed = _with_shapes(graph, shapes or {})
        before_layers, before = layer_costs(typed), totals(typed)
        del typed
        zero_classes(graph, an, chosen)
        used: list = []
        fold(graph, feeds, exact=False, shapes=shapes, analysis_out=used)  # zeroing changed values, not shapes
        after_shapes = shrunk_shapes(used[0], shapes or {})
        typed = _with_shapes(graph, after_shapes)
        after_layers, after = layer_costs(typed), totals(typed)

        details = []
        for nid, b in before_layers.items():
            a = after_layers.get(nid)
            if a is None or (a["in"], a["out"]) == (b["in"], b["out"]):
                continue
            details.append({"kind": "pruned", "node": b["node"], "op": b["op"], "channels": [b["out"], a["out"]],
                            "in_channels": [b["in"], a["in"]], "params": [b["params"], a["params"]],
                            "macs": [b["macs"], a["macs"]], "reason": f"lowest {self.criterion} in its coupled group"})
        pruned_groups = sum(1 for grp in groups if any(c in chosen for c in grp.classes))
        ch_before = sum(r["out"] for r in before_layers.values())
        ch_after = sum(after_layers[n]["out"] for n in before_layers if n in after_layers)
        stats = {
            "groups": f"{pruned_groups}/{len(groups)}", "layers": len(details),
            "channels": _pct(ch_before, ch_after), "params": _pct(before["params"], after["params"]),
            "weight_bytes": _pct(before["weight_bytes"], after["weight_bytes"]),
            "macs": _pct(before["macs"], after["macs"]) if feeds else "unknown (no sample inputs)",
        }
        if before_model is not None:
            stats.update(compare(before_model, graph, feeds))
        summary = {"kind": "summary", "params": [before["params"], after["params"]],
                   "weight_bytes": [before["weight_bytes"], after["weight_bytes"]],
                   "macs": [before["macs"], after["macs"]], "channels": [ch_before, ch_after],
                   **{k: stats[k] for k in ("cosine", "psnr_db") if k in stats}}
        return PassResult(True, stats, [summary] + details + refused[:50] + notes[:20])


def _refused_groups(an: Analysis, groups: list[Group]) -> list[dict]:
    out = []
    for grp in groups:
        why = [an.blocked[c][0] for c in grp.classes if c in an.blocked]
        if why:
            n = sum(1 for c in grp.classes if c in an.blocked)
            out.append({"kind": "refused", "group": _group_name(an, grp),
                        "reason": f"{why[0]} ({n}/{len(grp.classes)} classes)"})
    return out


PIPELINES = [
    ("prune", "cleanup,prune-channels,cleanup",
     "cleanup (constant shape bookkeeping makes more channels provable), prune-channels{ratio=0.3}, cleanup"),
]

PASSES = [PruneChannels]

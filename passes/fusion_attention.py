"""Scaled-dot-product attention with its multi-head reshapes and transposes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, Outcome, P, Rule, Var, apply_rules, emit

from ._fusion import MS, OpsetGate, accepts, ort_cpu, reshape_target, scalar, static

HEADS = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


def _split_heads(x: Var, tag: str):
    return P("Transpose", P("Reshape", x, Var(), name=f"{tag}_reshape"), name=f"{tag}_heads", perm=HEADS)


def _k_transposed(form: str):
    """K as [B, H, D, Sk] in the forms exporters write."""
    k = Var("k")
    if form == "legacy":  # one Transpose straight from [B, Sk, H, D]
        return P("Transpose", P("Reshape", k, Var(), name="k_reshape"), name="k_heads", perm=[0, 2, 3, 1])
    if form == "dynamo":  # [B,H,Sk,D] -> [B*H,Sk,D] -> transpose -> [B,H,D,Sk]
        flat = P("Reshape", _split_heads(k, "k"), Var(), name="k_flat")
        return P("Reshape", P("Transpose", flat, name="k_t", perm=[0, 2, 1]), Var(), name="k_unflat")
    return P("Transpose", _split_heads(k, "k"), name="k_t", perm=[0, 1, 3, 2])  # generic transpose(-1, -2)


def _attention_rules(rewrite, check) -> list[Rule]:
    rules = []
    for kform in ("legacy", "dynamo", "generic"):
        for scaling in ("both", "scores-mul", "scores-div", "q", "none"):
            scores = _scaled_scores(_split_heads(Var("q"), "q"), _k_transposed(kform), scaling)
            probs = P("Softmax", scores, name="softmax")
            out = P("MatMul", probs, _split_heads(Var("v"), "v"), name="pv")
            merged = P("Reshape", P("Transpose", out, name="merge_heads", perm=HEADS), Var(), name="merge")
            rules.append(Rule("Attention", merged, rewrite, check, anchor="softmax", form=f"{kform}/{scaling}"))
    # Heads already split upstream (e.g. Wan: RMSNorm and rotary embedding on [B, S, H, D] before the
    # transpose): match from the 4-D q, k, v and emit Attention-23's 4-D form.
    for kform in ("dynamo", "generic"):
        for scaling in ("both", "scores-mul", "scores-div", "q", "none"):
            k4 = Var("k4")
            if kform == "dynamo":
                kt = P("Reshape", P("Transpose", P("Reshape", k4, Var(), name="k_flat"), name="k_t", perm=[0, 2, 1]),
                       Var(), name="k_unflat")
            else:
                kt = P("Transpose", k4, name="k_t", perm=[0, 1, 3, 2])
            q = Var("q4")
            scores = _scaled_scores(q, kt, scaling)
            out = P("MatMul", P("Softmax", scores, name="softmax"), Var("v4"), name="pv")
            rules.append(Rule("Attention", out, rewrite, check, anchor="softmax", form=f"4d-{kform}/{scaling}"))
    return rules


def _scaled_scores(q, kt, scaling: str):
    if scaling == "both":
        return P("MatMul", P("Mul", q, Const("q_scale"), name="q_scaled"), P("Mul", kt, Const("k_scale"), name="k_scaled"),
                 name="qk")
    if scaling == "q":
        return P("MatMul", P("Mul", q, Const("q_scale"), name="q_scaled"), kt, name="qk")
    scores = P("MatMul", q, kt, name="qk")
    if scaling == "scores-mul":
        return P("Mul", scores, Const("s_scale"), name="scaled_scores")
    if scaling == "scores-div":
        return P("Div", scores, Const("s_div"), name="scaled_scores")
    return scores


def _scale(m: Match, g: Graph):
    scale = 1.0  # softmax(q k^T) without a scale: an explicit scale of 1
    for name in ("q_scale", "k_scale", "s_scale"):
        if name in m:
            v = scalar(g, m[name])
            if v is None:
                return f"{name} is not a scalar constant"
            scale *= v
    if "s_div" in m:
        v = scalar(g, m["s_div"])
        if not v:
            return "score divisor is not a non-zero scalar constant"
        scale /= v
    return scale


def _softmax_ok(m: Match, g: Graph) -> str | None:
    axis = m.node("softmax").attr("axis", -1)
    if axis not in (-1, 3) or g.opsets.get("", 1) < 13:
        return f"Softmax over axis {axis} (opset {g.opsets.get('', 1)}), not the key axis"
    return None


def _geometry_4d(m: Match, g: Graph):
    """(heads, head_dim, scale) for already-split [B, H, S, D] q, k, v."""
    q, k, v = (g.type_of(m[t]).shape for t in ("q4", "k4", "v4"))
    if any(s is None or len(s) != 4 for s in (q, k, v)):
        return "q, k, v are not 4-D [batch, heads, seq, head_dim]"
    if not (isinstance(q[1], int) and q[1] == k[1] == v[1]):
        return f"head counts differ or are not static (q {q}, k {k}, v {v})"
    if not (isinstance(q[3], int) and q[3] == k[3]) or k[2] != v[2]:
        return f"q/k head sizes or k/v lengths differ (q {q}, k {k}, v {v})"
    if "k_flat" in m:
        back = g.type_of(m.node("k_unflat").outputs[0]).shape
        if back is None or list(back) != [k[0], k[1], k[3], k[2]]:
            return f"K transpose round trip ends as {back}, not {[k[0], k[1], k[3], k[2]]}"
    why = _softmax_ok(m, g)
    if why:
        return why
    scale = _scale(m, g)
    return scale if isinstance(scale, str) else (q[1], q[3], scale)


def _geometry(m: Match, g: Graph):
    """(heads, head_dim, scale) of a match, or why it is not plain multi-head attention."""
    if "q4" in m:
        return _geometry_4d(m, g)
    dims = {}
    for t in ("q", "k", "v"):
        shape = g.type_of(m[t]).shape
        if shape is None or len(shape) != 3 or not isinstance(shape[2], int):
            return f"{t} input '{m[t]}' is not [batch, seq, hidden] with a static hidden size ({g.type_of(m[t])})"
        split = g.type_of(m.node(f"{t}_reshape").outputs[0]).shape
        target = reshape_target(g, m.node(f"{t}_reshape"))
        four = split if split is not None and len(split) == 4 and isinstance(split[2], int) and isinstance(split[3], int) \
            else target
        if four is None or len(four) != 4 or not all(isinstance(d, int) and d > 0 for d in four[2:]):
            return f"{t} head split Reshape has no static [.., .., heads, head_dim] shape"
        if four[2] * four[3] != shape[2]:
            return f"{t} head split {list(four)} does not divide hidden {shape[2]}"
        dims[t] = (four[2], four[3], shape)
    (hq, dq, qs), (hk, dk, ks), (hv, dv, vs) = dims["q"], dims["k"], dims["v"]
    if not hq == hk == hv:
        return f"head counts differ (q {hq}, k {hk}, v {hv})"
    if dq != dk or dk != dv:
        return f"head sizes differ (q {dq}, k {dk}, v {dv})"
    if ks[1] != vs[1] or (qs[0] != ks[0] and isinstance(qs[0], int) and isinstance(ks[0], int)):
        return f"k/v sequence or batch mismatch (q {qs}, k {ks}, v {vs})"
    if "k_flat" in m:  # dynamo's [B*H, Sk, D] round trip must put K back as [B, H, D, Sk]
        back = g.type_of(m.node("k_unflat").outputs[0]).shape
        if back is None or len(back) != 4 or back[1] != hk or back[2] != dk:
            return f"K transpose round trip ends as {back}, not [B, {hk}, {dk}, Sk]"
    why = _softmax_ok(m, g)
    if why:
        return why
    merged = g.type_of(m.node("merge").outputs[0]).shape
    if merged is None or len(merged) != 3 or merged[2] != hq * dq:
        return f"heads are merged into {merged}, not [batch, seq, {hq * dq}]"
    scale = _scale(m, g)
    if isinstance(scale, str):
        return scale
    return hq, dq, scale


# ORT CPU (1.31, one thread), MultiHeadAttention vs Attention-23 on svd-unet:small's shapes (B, S, heads x 32):
# short sequences favour Attention-23 (S=4: 1.26 vs 1.10 ms for B=1024, 0.71 vs 0.63 ms for B=256; S=64:
# 0.41 vs 0.33 ms), long ones MultiHeadAttention's flash kernel (S=256: 2.40 vs 2.58 ms; S=1024: 16.7 vs
# 18.4 ms). The unfused MatMul-Softmax-MatMul (scale on the scores, in q or folded away) is slower than
# both at every length (19.5 ms at S=1024, 1.7 ms at S=4).
ORT_CPU_SHORT_KV = 64


def _kv_length(m: Match, g: Graph):
    shape = g.type_of(m["k4"] if "k4" in m else m["k"]).shape
    if shape is None:
        return None
    d = shape[2] if "k4" in m else shape[1]
    return d if isinstance(d, int) else None


def _choice(ctx, gate: OpsetGate, form: str, four_d: bool = False, kv_length: int | None = None,
            short_kv: int = ORT_CPU_SHORT_KV):
    """(op, domain, why) to emit, or why none can be (MultiHeadAttention takes only 3-D q, k, v)."""
    want = [("MultiHeadAttention", MS), ("Attention", "")]
    why = ""
    if form == "Attention" or four_d:
        want = want[1:]
    elif form == "MultiHeadAttention":
        want = want[:1]
    elif ort_cpu(ctx) and accepts(ctx, "MultiHeadAttention", MS) and accepts(ctx, "Attention"):  # a real choice
        if kv_length is not None and kv_length <= short_kv:
            want.reverse()
            why = f"ORT CPU, {kv_length} keys <= {short_kv}: Attention-23 measured faster"
        else:
            why = f"ORT CPU, {kv_length or 'unknown'} keys > {short_kv}: MultiHeadAttention's flash kernel measured faster"
    reasons = []
    for op, domain in want:
        if not accepts(ctx, op, domain):
            reasons.append(f"target does not accept {domain + '::' if domain else ''}{op}")
            continue
        if domain == "":
            block = gate.blocker(23)
            if block:
                reasons.append(f"Attention-23 needs opset 23: {block}")
                continue
        return op, domain, "; ".join(reasons + [why]) if why else ""  # why: only a choice the target allowed
    return "; ".join(reasons)


@dataclass(frozen=True)
class FuseAttention(Pass):
    """Fuse scaled-dot-product attention with its multi-head split and merge.

    Rewrite cases (q, k, v: [B, S, H*D]; self or cross, spatial or temporal - only the shapes differ):
    - Reshape(q,[B,S,H,D]) -> Transpose(0,2,1,3), K as Transpose(0,2,3,1) (TorchScript), as the
      [B*H,Sk,D] Reshape-Transpose-Reshape round trip (dynamo) or Transpose(0,1,3,2);
    - scaling: sqrt(scale) on both q and k (torch's SDPA export), on q only, on the scores (Mul or
      Div), or none; -> Softmax(-1) -> MatMul(v heads) -> Transpose(0,2,1,3) -> Reshape([B,S,H*D]);
    emitted as com.microsoft MultiHeadAttention where the target has it (ORT), else Attention-23
    with q_num_heads/kv_num_heads (the default domain is raised to 23 when every op stays valid);
    on ORT CPU the form goes by the key length: Attention-23 for at most `short_kv` keys (SVD's
    temporal attention over frames), MultiHeadAttention above (its flash kernel; spatial attention).
    - heads split upstream (Wan: RMSNorm and rotary embedding before the transpose): 4-D q, k, v
      with K as Transpose(0,1,3,2) or dynamo's round trip -> Attention-23 on the 4-D tensors;
    Refused: masks or biases on the scores, differing head sizes, non-constant scales, or a target
    that takes neither op (TVM's ONNX importer takes no Attention-23).
    `form`: auto, MultiHeadAttention, Attention. Where the target takes both (ORT CPU), stats count what
    was emitted ("emitted Attention-23") and each fused event says why.
    """

    name = "fuse-attention"
    form: Literal["auto", "MultiHeadAttention", "Attention"] = "auto"
    short_kv: int = ORT_CPU_SHORT_KV  # ORT CPU: Attention-23 up to this many keys, MultiHeadAttention above

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gate = OpsetGate(graph)
        emitted: dict[str, int] = {}

        def choice(m, g, c):
            four_d = "q4" in m and _unsplit_heads(m, g) is None
            return _choice(c, gate, self.form, four_d, _kv_length(m, g), self.short_kv)

        def check(m, g, c):
            geo = _geometry(m, g)
            if isinstance(geo, str):
                return geo
            chosen = choice(m, g, c)
            return chosen if isinstance(chosen, str) else None

        def rewrite(m, g, c):
            heads, head_dim, scale = _geometry(m, g)
            op, domain, why = choice(m, g, c)
            label = "MultiHeadAttention" if domain else "Attention-23"
            if why:  # a target-based choice: counted, and its reason goes into this match's explain event
                emitted[label] = emitted.get(label, 0) + 1
                reasons[m.node("softmax").name or m.node("softmax").outputs[0]] = f"{label}: {why}"
            if "q4" in m and domain:  # heads split by plain Transposes: MultiHeadAttention on [B, S, H*D]
                gate.require(domain, 1)
                return [_bshd_attention(g, m, _unsplit_heads(m, g), heads, head_dim, scale)]
            if "q4" in m:
                gate.require("", 23)
                node = emit(g, "Attention", [m["q4"], m["k4"], m["v4"]], like=m.node("softmax"), attrs={"scale": scale},
                            suffix="Attention")
                return [node.outputs[0]]
            if domain:
                gate.require(domain, 1)
                attrs = {"num_heads": heads, "scale": scale}
            else:
                gate.require("", 23)
                attrs = {"q_num_heads": heads, "kv_num_heads": heads, "scale": scale}
            node = emit(g, op, [m["q"], m["k"], m["v"]], like=m.node("softmax"), domain=domain, attrs=attrs,
                        suffix=op)
            return [node.outputs[0]]

        reasons: dict[str, str] = {}
        out = apply_rules(graph, _attention_rules(rewrite, check), ctx)
        for event in out.details:
            if event["kind"] == "fused" and event["node"] in reasons:
                event["emitted"] = reasons[event["node"]]
        stats = {**out.stats(), **{f"emitted {k}": v for k, v in sorted(emitted.items())}}
        return PassResult(out.modified, stats, out.details)


def _unsplit_heads(m: Match, g: Graph) -> list[str] | None:
    """[B, S, H, D] q, k, v under 4-D attention's Transpose(0, 2, 1, 3) head splits, or None."""
    found = []
    for t in ("q4", "k4", "v4"):
        node = g.producer(m[t])
        if node is None or node.op_type != "Transpose" or list(node.attr("perm") or ()) != HEADS:
            return None
        found.append(node.inputs[0])
    return found


def _bshd_attention(g: Graph, m: Match, bshd: list[str], heads: int, head_dim: int, scale: float) -> str:
    """MultiHeadAttention on q, k, v reshaped (not transposed) to [B, S, H*D]: ORT's flash kernel reads that
    layout as is. The result goes back to [B, H, S, D] through Reshape + Transpose, which cancels against
    the readers' own merge Transpose (remove-noops): Wan's self-attention then has no transposes left."""
    like = m.node("softmax")
    dtype = g.type_of(m["q4"]).dtype
    flat = g.add_constant(np.array([0, 0, heads * head_dim], np.int64), f"{like.name}.bsd")

    def typed(shape):
        return TensorType(dtype, tuple(shape)) if shape is not None else None

    q3, k3, v3 = (emit(g, "Reshape", [x, flat], like=like, suffix=f"{t}_bsd",
                       types=[typed(_bsd(g.type_of(x).shape))]).outputs[0] for x, t in zip(bshd, "qkv"))
    out_bshd = _bshd(g.type_of(m["q4"]).shape)
    attn = emit(g, "MultiHeadAttention", [q3, k3, v3], like=like, domain=MS, suffix="MultiHeadAttention",
                attrs={"num_heads": heads, "scale": scale}, types=[typed(_bsd(out_bshd))])
    split = g.add_constant(np.array([0, 0, heads, head_dim], np.int64), f"{like.name}.bshd")
    back = emit(g, "Reshape", [attn.outputs[0], split], like=like, suffix="heads", types=[typed(out_bshd)])
    return emit(g, "Transpose", [back.outputs[0]], like=like, suffix="bhsd", attrs={"perm": HEADS},
                types=[g.type_of(m.node("pv").outputs[0])]).outputs[0]


def _bshd(bhsd):
    return None if bhsd is None else [bhsd[0], bhsd[2], bhsd[1], bhsd[3]]


def _bsd(bshd):
    if bshd is None:
        return None
    inner = bshd[2] * bshd[3] if isinstance(bshd[2], int) and isinstance(bshd[3], int) else None
    return [bshd[0], bshd[1], inner]


# ---- attention over one key -------------------------------------------------------------------------
def _seq_axis(rank: int) -> int | None:
    return {3: 1, 4: 2}.get(rank)  # [B, S, C] or [B, H, S, D]


def _single_key_check(m: Match, g: Graph, c) -> str | None:
    node = m.node("attn")
    if any(node.inputs[3:]):
        return "attention has a mask, bias or past state"
    if any(g.is_used(o) for o in node.outputs[1:] if o):
        return "attention's present state or scores are read"
    if node.attr("is_causal", 0) or node.attr("unidirectional", 0):
        return "causal attention"
    for t in ("k", "v"):
        shape = g.type_of(m[t]).shape
        axis = _seq_axis(len(shape)) if shape is not None else None
        if axis is None or shape[axis] != 1:
            return f"{t} {shape} is not one token long"
    out, v = g.type_of(node.outputs[0]).shape, g.type_of(m["v"]).shape
    if not static(out) or len(v) != len(out):
        return f"output shape {out} is not static or differs in rank from v {v}"
    try:
        if np.broadcast_shapes(tuple(d if isinstance(d, int) else 1 for d in v), tuple(out)) != tuple(out):
            return f"v {v} does not broadcast to the output {out} (grouped heads)"
    except ValueError:
        return f"v {v} does not broadcast to the output {out} (grouped heads)"
    return None


def _expand(g: Graph, x: str, shape, like, made: set[str]) -> str:
    target = g.add_constant(np.array(shape, np.int64), f"{like.name or 'broadcast'}.shape")
    y = emit(g, "Expand", [x, target], like=like, suffix="broadcast",
             types=[TensorType(g.type_of(x).dtype, tuple(shape))]).outputs[0]
    made.add(y)
    return y


def _single_key_rules(made: set[str]) -> list[Rule]:
    def rewrite(m: Match, g: Graph, c):
        node = m.node("attn")
        return [_expand(g, m["v"], g.type_of(node.outputs[0]).shape, node, made)]

    return [Rule("SingleKey", P(op, Var("q"), Var("k"), Var("v"), name="attn", domain=domain), rewrite,
                 _single_key_check, form=op) for op, domain in (("MultiHeadAttention", MS), ("Attention", ""))]


def _bshape(*shapes):
    try:
        return np.broadcast_shapes(*(tuple(s) for s in shapes))
    except (ValueError, TypeError):
        return None


def _sink_rules(made: set[str]) -> list[Rule]:
    """Move a broadcast this pass made below the op that reads it (the op then runs on fewer rows)."""

    def operands(m: Match) -> list[str]:  # the op's inputs with the unbroadcast x in place of the Expand
        e = m.node("expand").outputs[0]
        return [m["x"] if t == e else t for t in m.node("op").inputs]

    def check(m: Match, g: Graph, c) -> str | None:
        if m.node("expand").outputs[0] not in made:
            return "not a broadcast this pass made"
        node = m.node("op")
        out, x = g.type_of(node.outputs[0]).shape, g.type_of(m["x"]).shape
        if not static(out) or not static(x):
            return "shapes are not static"
        if node.op_type == "MatMul":
            w = m.const("w")
            return None if w.ndim == 2 and len(x) >= 2 and x[-1] == w.shape[0] else "not a 2-D projection of the rows"
        if "c" in m:
            return None if _bshape(_bshape(x, m.const("c").shape) or (0, 0, 0), out) == tuple(out) else \
                "the constant operand changes the broadcast"
        return None if _bshape(*(g.type_of(t).shape for t in operands(m))) == tuple(out) else \
            "the other operand does not have the output's shape"

    def rewrite(m: Match, g: Graph, c):
        node, ins = m.node("op"), operands(m)
        t = g.type_of(node.outputs[0])
        if node.op_type == "MatMul":
            rows = tuple(g.type_of(m["x"]).shape[:-1]) + (m.const("w").shape[1],)
        else:
            rows = _bshape(*(g.type_of(i).shape for i in ins))
        y = emit(g, node.op_type, ins, like=node, suffix="rows", types=[TensorType(t.dtype, tuple(rows))]).outputs[0]
        return [y if tuple(rows) == tuple(t.shape) else _expand(g, y, t.shape, node, made)]

    expand = lambda: P("Expand", Var("x"), Const(), name="expand", shared=True)  # noqa: E731
    ew = ("Add", "Sub", "Mul", "Div")
    return [Rule("Broadcast", P(ew, expand(), Var("r"), name="op", commute=True), rewrite, check, anchor="expand",
                 form="into-operand"),
            Rule("Broadcast", P(ew, expand(), Const("c"), name="op", commute=True), rewrite, check, anchor="expand",
                 form="constant"),
            Rule("Broadcast", P("MatMul", expand(), Const("w"), name="op"), rewrite, check, anchor="expand",
                 form="projection")]


@dataclass(frozen=True)
class FoldSingleKeyAttention(Pass):
    """Attention over one key is that key's value, broadcast: the softmax of one score is exactly 1.

    Rewrite cases (SVD's cross-attention reads one image-embedding token per frame):
    - com.microsoft MultiHeadAttention(q, k, v) or Attention-23(q, k, v), no mask, bias or past, not
      causal, no extra output read, k and v one token long (static), v broadcastable to the output
      -> Expand(v, output shape); the query side (its norm, the Q projection) and K go dead and are removed;
    - the broadcast then sinks below its readers, so they run on one row instead of every query:
      MatMul(Expand(x), W[K, N] constant) -> Expand(MatMul(x, W)); Add/Sub/Mul/Div(Expand(x), constant)
      -> Expand(op(x, constant)); op(Expand(x), r) with r of the output's shape (the residual Add)
      -> op(x, r), which broadcasts by itself.
    Standard ops only, so every target takes it; it sees only attention that fuse-attention fused.
    Exact for finite scores (an inf or NaN score would have made the original NaN).
    """

    name = "fuse-single-key-attention"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        made: set[str] = set()
        out = apply_rules(graph, _single_key_rules(made), ctx)
        sunk = Outcome()
        for _ in range(16):  # each round moves every broadcast one op down
            step = apply_rules(graph, _sink_rules(made), ctx)
            sunk.fused["Broadcast"] = sunk.fused.get("Broadcast", 0) + step.fused.get("Broadcast", 0)
            sunk.details = [d for d in sunk.details if d["kind"] == "fused"] + step.details
            if not step.modified:
                break
        removed = 0
        if out.modified:  # the query path and K projection of a folded attention are dead now
            from .dce import DeadCodeElimination

            removed = DeadCodeElimination().run(graph, ctx).stats["nodes_removed"]
        stats = {**out.stats(), "broadcasts moved down": sunk.fused.get("Broadcast", 0), "dead nodes removed": removed}
        return PassResult(out.modified or bool(sunk.fused.get("Broadcast")), stats, out.details + sunk.details)


PASSES = [FuseAttention, FoldSingleKeyAttention]

"""Scaled-dot-product attention with its multi-head reshapes and transposes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, P, Rule, Var, apply_rules, emit

from ._fusion import MS, OpsetGate, accepts, reshape_target, scalar, static

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
            q = _split_heads(Var("q"), "q")
            kt = _k_transposed(kform)
            if scaling == "both":
                scores = P("MatMul", P("Mul", q, Const("q_scale"), name="q_scaled"),
                           P("Mul", kt, Const("k_scale"), name="k_scaled"), name="qk")
            elif scaling == "q":
                scores = P("MatMul", P("Mul", q, Const("q_scale"), name="q_scaled"), kt, name="qk")
            else:
                scores = P("MatMul", q, kt, name="qk")
                if scaling == "scores-mul":
                    scores = P("Mul", scores, Const("s_scale"), name="scaled_scores")
                elif scaling == "scores-div":
                    scores = P("Div", scores, Const("s_div"), name="scaled_scores")
            probs = P("Softmax", scores, name="softmax")
            out = P("MatMul", probs, _split_heads(Var("v"), "v"), name="pv")
            merged = P("Reshape", P("Transpose", out, name="merge_heads", perm=HEADS), Var(), name="merge")
            rules.append(Rule("Attention", merged, rewrite, check, anchor="softmax", form=f"{kform}/{scaling}"))
    return rules


def _geometry(m: Match, g: Graph):
    """(heads, head_dim, scale) of a match, or why it is not plain multi-head attention."""
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
    axis = m.node("softmax").attr("axis", -1)
    if axis not in (-1, 3) or g.opsets.get("", 1) < 13:
        return f"Softmax over axis {axis} (opset {g.opsets.get('', 1)}), not the key axis"
    merged = g.type_of(m.node("merge").outputs[0]).shape
    if merged is None or len(merged) != 3 or merged[2] != hq * dq:
        return f"heads are merged into {merged}, not [batch, seq, {hq * dq}]"
    scale = 1.0
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
    if "q_scale" not in m and "s_scale" not in m and "s_div" not in m:
        scale = 1.0  # softmax(q k^T): an explicit scale of 1
    return hq, dq, scale


def _choice(ctx, gate: OpsetGate, form: str):
    """(op, domain) to emit, or why none can be."""
    want = [("MultiHeadAttention", MS), ("Attention", "")]
    if form == "Attention":
        want = want[1:]
    elif form == "MultiHeadAttention":
        want = want[:1]
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
        return op, domain
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
    with q_num_heads/kv_num_heads (the default domain is raised to 23 when every op stays valid).
    Refused: masks or biases on the scores, differing head sizes, non-constant scales, or a target
    that takes neither op (TVM's ONNX importer takes no Attention-23).
    `form`: auto, MultiHeadAttention, Attention.
    """

    name = "fuse-attention"
    form: Literal["auto", "MultiHeadAttention", "Attention"] = "auto"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gate = OpsetGate(graph)

        def check(m, g, c):
            geo = _geometry(m, g)
            if isinstance(geo, str):
                return geo
            choice = _choice(c, gate, self.form)
            return choice if isinstance(choice, str) else None

        def rewrite(m, g, c):
            heads, head_dim, scale = _geometry(m, g)
            op, domain = _choice(c, gate, self.form)
            if domain:
                gate.require(domain, 1)
                attrs = {"num_heads": heads, "scale": scale}
            else:
                gate.require("", 23)
                attrs = {"q_num_heads": heads, "kv_num_heads": heads, "scale": scale}
            node = emit(g, op, [m["q"], m["k"], m["v"]], like=m.node("softmax"), domain=domain, attrs=attrs,
                        suffix=op)
            return [node.outputs[0]]

        return apply_rules(graph, _attention_rules(rewrite, check), ctx).result()


PASSES = [FuseAttention]

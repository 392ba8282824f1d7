"""Residual streams: bias + residual adds into the normalization that follows them (where a target has
such an op); a blend of a residual block's input and output as one residual add."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, P, Rule, Var, apply_rules, emit

from ._fusion import MS, accepts, ort_cpu, preference, scalar, static


@dataclass(frozen=True)
class FuseSkipLayerNorm(Pass):
    """Residual Add (+ bias Add) + LayerNormalization -> com.microsoft SkipLayerNormalization.

    Rewrite cases (only for targets that accept com.microsoft SkipLayerNormalization, i.e. ORT):
    - LayerNormalization(Add(a, b), gamma, beta) over the last axis, a and b of one shape: the Add's
      sum, when other nodes read it (the residual stream), comes from SkipLayerNormalization's
      fourth output;
    - LayerNormalization(Add(Add(a, bias), b)) with a constant 1-D bias: the bias is the fifth input.
    Refused elsewhere: standard ONNX has no such op, and TVM's importer needs both beta and bias.
    Skipped on ORT CPU unless `force`: its SkipLayerNormalization kernel measured slower than the Add +
    LayerNormalization that ORT's own optimizer leaves (37.7 vs ~13 ms over 35 blocks of a mid-size
    SVD UNet, one thread); the CUDA EP is where it pays.
    """

    name = "fuse-skip-layernorm"
    force: bool = False  # also on ORT CPU, where it measured slower

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        why = _skip(ctx, self.force)
        if why:  # one line, not one refusal per LayerNorm
            return PassResult(False, {"SkipLayerNorm": why})

        def check(m: Match, g: Graph, c) -> str | None:
            ln = m.node("ln")
            rank = len(g.type_of(m["a"]).shape or ())
            if ln.attr("axis", -1) not in (-1, rank - 1) or len(ln.inputs) < 3 or not ln.inputs[2]:
                return "LayerNormalization is not over the last axis with a bias"
            if g.type_of(m["a"]).shape != g.type_of(m["b"]).shape or rank != 3:
                return "skip and input differ in shape or are not 3-D (SkipLayerNormalization needs [B, S, C])"
            if "bias" in m and m.const("bias").ndim != 1:
                return "bias is not 1-D"
            return None

        def rewrite(m: Match, g: Graph, c):
            ln, add = m.node("ln"), m.node("add")
            ins = [m["a"], m["b"], ln.inputs[1], ln.inputs[2]] + ([m["bias"]] if "bias" in m else [])
            sums = g.unique_name(f"{add.outputs[0]}_sum")
            node = emit(g, "SkipLayerNormalization", ins, like=ln, domain=MS,
                        attrs={"epsilon": float(ln.attr("epsilon", 1e-5))},
                        outputs=[g.unique_name(f"{ln.name or 'skipln'}_out"), "", "", sums],
                        types=[g.type_of(ln.outputs[0]), None, None, g.type_of(add.outputs[0])])
            g.opsets.setdefault(MS, 1)
            if g.is_used(add.outputs[0]):
                g.replace_all_uses(add.outputs[0], sums)
            return [node.outputs[0]]

        rules = []
        for with_bias in (True, False):
            a = P("Add", Var("a"), Const("bias"), name="bias_add") if with_bias else Var("a")
            add = P("Add", a, Var("b"), name="add", shared=True)
            ln = P("LayerNormalization", add, Var(), Var(), name="ln")
            rules.append(Rule("SkipLayerNorm", ln, rewrite, check, anchor="ln", form="bias" if with_bias else "plain"))
        return apply_rules(graph, rules, ctx).result()


def _skip(ctx, force: bool) -> str | None:
    if not accepts(ctx, "SkipLayerNormalization", MS):
        return "target does not accept com.microsoft SkipLayerNormalization"
    pref = preference(ctx, "SkipLayerNorm")
    if force or pref == "SkipLayerNormalization":
        return None
    if pref or ort_cpu(ctx):
        return "skipped: slower than Add + LayerNormalization on ORT CPU (force=true to fuse anyway)"
    return None


# ---- alpha blend of a residual block's input and output -----------------------------------------------
def _scaled_producer(g: Graph, r: str):
    """The Conv (with constant weight and bias) that alone produces r, through Reshapes each read only
    by the next node: its output can absorb a scalar factor into its weights. None if there is none."""
    t = r
    while True:
        node = g.producer(t)
        if node is None or len(g.consumers(t)) != 1 or t in g.outputs:
            return None
        if node.op_type == "Reshape" and node.domain == "":
            t = node.inputs[0]
            continue
        if node.op_type == "Conv" and node.domain == "" and g.is_constant(node.inputs[1]) and \
                (len(node.inputs) < 3 or not node.inputs[2] or g.is_constant(node.inputs[2])):
            return node
        return None


@dataclass(frozen=True)
class FoldAlphaBlend(Pass):
    """A blend of a residual block's input x and its output x + r as one residual add.

    Rewrite cases (diffusers' AlphaBlender after SVD's temporal ResBlock: alpha x + (1 - alpha)(x + r)):
    - Add(Mul(x, a), Mul(Add(x, r), b)) with constants a + b = 1 (within 1e-6, elementwise after
      broadcasting) and x, r and the result of one shape -> Add(x, Mul(r, b)) = (a + b) x + b r;
    - when b is one scalar and r comes from a Conv with constant weights (through Reshapes only it
      reads), b is folded into that Conv's weights and bias: -> Add(x, Conv'(...)).
    Four passes over the activation become one. Equal to the original up to float rounding.
    ORT CPU only unless `force` (measured there; other targets fuse element-wise chains themselves).
    """

    name = "fuse-alpha-blend"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not self.force and not ort_cpu(ctx):
            return PassResult(False, {"AlphaBlend": "skipped: only measured to pay on ORT CPU"})

        def check(m: Match, g: Graph, c) -> str | None:
            x, r, out = (g.type_of(t).shape for t in (m["x"], m["r"], m.node("blend").outputs[0]))
            if not (static(x) and static(r) and static(out)) or not (tuple(x) == tuple(r) == tuple(out)):
                return f"x {x}, r {r} and the blend {out} are not of one static shape"
            a, b = m.const("a"), m.const("b")
            try:
                total = np.broadcast_to(a.astype(np.float64), np.broadcast_shapes(a.shape, b.shape)) + b
                np.broadcast_shapes(a.shape, b.shape, tuple(out))
            except ValueError:
                return "blend factors do not broadcast to the blend"
            if np.broadcast_shapes(a.shape, b.shape, tuple(out)) != tuple(out):
                return "blend factors broadcast the blend to a larger shape"
            if not np.allclose(total, 1.0, rtol=0, atol=1e-6):
                return f"blend factors do not sum to 1 (a + b in [{total.min():.6g}, {total.max():.6g}])"
            return None

        def rewrite(m: Match, g: Graph, c):
            blend = m.node("blend")
            r, factor = m["r"], scalar(g, m["b"])
            conv = _scaled_producer(g, r) if factor is not None else None
            if conv is not None:
                w = g.constant(conv.inputs[1])
                stem = conv.name or "conv"
                scaled_w = (w.astype(np.float64) * factor).astype(w.dtype)
                g.set_input(conv, 1, g.add_constant(scaled_w, f"{stem}.blended_weight"))
                if len(conv.inputs) > 2 and conv.inputs[2]:
                    bias = g.constant(conv.inputs[2])
                    g.set_input(conv, 2, g.add_constant((bias.astype(np.float64) * factor).astype(bias.dtype),
                                                        f"{stem}.blended_bias"))
                scaled = r
            else:
                scaled = emit(g, "Mul", [r, m["b"]], like=m.node("mix_r"), suffix="residual",
                              types=[g.type_of(r)]).outputs[0]
            return [emit(g, "Add", [m["x"], scaled], like=blend, suffix="residual",
                         types=[g.type_of(blend.outputs[0])]).outputs[0]]

        x = Var("x")
        pat = P("Add", P("Mul", x, Const("a"), name="mix_x"),
                P("Mul", P("Add", x, Var("r"), name="residual"), Const("b"), name="mix_r"), name="blend")
        return apply_rules(graph, [Rule("AlphaBlend", pat, rewrite, check, anchor="residual")], ctx).result()


PASSES = [FuseSkipLayerNorm, FoldAlphaBlend]

# Fusion order: folding BN first changes no pattern; norms before activations (GroupNorm's SiLU
# tail stays a SiLU); attention, then attention over one key folded (its Q path dies), before packing
# (packing feeds the fused op from a Split); packing and unpacking are each for their own targets
# (ORT CPU unpacks), then bias + GELU (sees an unpacked gate's bias); Gemm, then the Conv layout
# choice last (its Reshapes would sit inside other patterns); remove-noops merges the layout ops fusions
# leave next to each other.
PIPELINES = [
    ("fuse",
     "fuse-conv-bn,fuse-groupnorm,fuse-layernorm,fuse-rmsnorm,fuse-gelu,fuse-silu,fuse-attention,"
     "fuse-single-key-attention,fuse-qkv,unpack-projections,fuse-bias-gelu,fuse-skip-layernorm,fuse-gemm,"
     "fuse-alpha-blend,fuse-upsample-conv,temporal-conv-2d,remove-noops,dce",
     "all fusions, each emitting what the target accepts (and runs best)"),
]

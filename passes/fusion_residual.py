"""Bias + residual adds into the normalization that follows them (where a target has such an op)."""

from __future__ import annotations

from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, P, Rule, Var, apply_rules, emit

from ._fusion import MS, accepts, ort_cpu, preference


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


PASSES = [FuseSkipLayerNorm]

# Fusion order: folding BN first changes no pattern; norms before activations (GroupNorm's SiLU
# tail stays a SiLU); attention, then attention over one key folded (its Q path dies), before packing
# (packing feeds the fused op from a Split); packing and unpacking are each for their own targets
# (ORT CPU unpacks), then bias + GELU (sees an unpacked gate's bias); Gemm, then the Conv layout
# choice last (its Reshapes would sit inside other patterns).
PIPELINES = [
    ("fuse",
     "fuse-conv-bn,fuse-groupnorm,fuse-layernorm,fuse-rmsnorm,fuse-gelu,fuse-silu,fuse-attention,"
     "fuse-single-key-attention,fuse-qkv,unpack-projections,fuse-bias-gelu,fuse-skip-layernorm,fuse-gemm,"
     "temporal-conv-2d,dce",
     "all fusions, each emitting what the target accepts (and runs best)"),
]

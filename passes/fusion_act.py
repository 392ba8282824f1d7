"""Activation fusions: GELU (erf and tanh forms), bias + GELU, and SiLU."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, P, Rule, Var, apply_rules, emit

from ._fusion import MS, OpsetGate, accepts, ort_cpu

SQRT2 = math.sqrt(2.0)


def _half_forms(x: Var, inner, tag: str):
    """0.5 * x * inner, in the three orders exporters write it."""
    half = lambda: Const("half", value=0.5)  # noqa: E731 - a fresh leaf per pattern
    yield P("Mul", P("Mul", x, inner, name="x_inner"), half(), name="out"), f"{tag}:(x*g)*0.5"
    yield P("Mul", x, P("Mul", inner, half(), name="half_inner"), name="out"), f"{tag}:x*(g*0.5)"
    yield P("Mul", P("Mul", x, half(), name="half_x"), inner, name="out"), f"{tag}:(x*0.5)*g"


def _gelu_rules(rewrite, check) -> list[Rule]:
    rules = []
    # erf form: 0.5 * x * (1 + erf(x / sqrt(2)))
    for scaled in ("div", "mul"):
        x = Var("x")
        arg = P("Div", x, Const("c", value=SQRT2, rtol=1e-4), name="arg") if scaled == "div" else \
            P("Mul", x, Const("c", value=1 / SQRT2, rtol=1e-4), name="arg")
        inner = P("Add", P("Erf", arg, name="erf"), Const("one", value=1.0), name="inner")
        for pat, form in _half_forms(x, inner, f"erf-{scaled}"):
            rules.append(Rule("Gelu", pat, rewrite, check, anchor="erf", form=form))
    # tanh form: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    for cube in ("pow", "mul"):
        x = Var("x")
        x3 = P("Pow", x, Const("three", value=3.0), name="cube") if cube == "pow" else \
            P("Mul", x, P("Mul", x, x, name="square"), name="cube")
        poly = P("Add", x, P("Mul", x3, Const("k", value=0.044715, rtol=1e-3), name="kx3"), name="poly")
        arg = P("Mul", poly, Const("c", value=math.sqrt(2 / math.pi), rtol=1e-3), name="arg")
        inner = P("Add", P("Tanh", arg, name="erf"), Const("one", value=1.0), name="inner")
        for pat, form in _half_forms(x, inner, f"tanh-{cube}"):
            rules.append(Rule("Gelu", pat, rewrite, check, anchor="erf", form=form))
    return rules


def _gelu_emit_choice(ctx, gate: OpsetGate, tanh: bool) -> tuple[str, str] | str:
    """(op, domain) to emit, or why none can be."""
    if accepts(ctx, "Gelu") and not gate.blocker(20):
        return "Gelu", ""
    ms_op = "FastGelu" if tanh else "Gelu"
    if accepts(ctx, ms_op, MS):
        return ms_op, MS
    if accepts(ctx, "Gelu"):
        return f"Gelu-20 needs opset 20: {gate.blocker(20)}"
    return "target accepts neither Gelu-20 nor com.microsoft " + ms_op


@dataclass(frozen=True)
class FuseGelu(Pass):
    """Fuse decomposed GELU.

    Rewrite cases:
    - 0.5 * x * (1 + Erf(x / sqrt(2))) (also x * 0.7071...), any order of the 0.5 and x products;
    - 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), x^3 as Pow(x, 3) or x*(x*x);
    emitted as Gelu-20 (approximate="tanh" for the tanh form; the default domain is raised to 20
    when every op stays valid) or, where the target takes it instead, com.microsoft Gelu/FastGelu.
    """

    name = "fuse-gelu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gate = OpsetGate(graph)

        def check(m: Match, g, c):
            choice = _gelu_emit_choice(c, gate, m.node("erf").op_type == "Tanh")
            return choice if isinstance(choice, str) else None

        def rewrite(m: Match, g, c):
            tanh = m.node("erf").op_type == "Tanh"
            op, domain = _gelu_emit_choice(c, gate, tanh)
            attrs = {"approximate": "tanh"} if tanh and domain == "" else None
            if domain == "":
                gate.require("", 20)
            else:
                gate.require(domain, 1)
            return [emit(g, op, [m["x"]], like=m.node("erf"), domain=domain, attrs=attrs).outputs[0]]

        return apply_rules(graph, _gelu_rules(rewrite, check), ctx).result()


def _silu_choice(ctx, gate: OpsetGate) -> tuple[str, str] | str:
    if accepts(ctx, "QuickGelu", MS):
        return "QuickGelu", MS  # x * sigmoid(alpha * x) with alpha = 1
    if accepts(ctx, "Swish"):
        block = gate.blocker(24)
        return f"Swish needs opset 24: {block}" if block else ("Swish", "")
    return "target accepts neither Swish-24 nor com.microsoft QuickGelu (x * Sigmoid(x) stays)"


@dataclass(frozen=True)
class FuseSiLU(Pass):
    """Fuse SiLU (swish): x * Sigmoid(x).

    Rewrite cases:
    - Mul(x, Sigmoid(x)) in either operand order;
    emitted as com.microsoft QuickGelu(alpha=1) where the target has it (ORT), else Swish-24 where the
    target accepts it and the default domain can be raised to 24; otherwise refused (TVM fuses the
    elementwise pair itself).
    """

    name = "fuse-silu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gate = OpsetGate(graph)

        def check(m, g, c):
            choice = _silu_choice(c, gate)
            return choice if isinstance(choice, str) else None

        def rewrite(m, g, c):
            op, domain = _silu_choice(c, gate)
            gate.require(domain, 24 if domain == "" else 1)
            attrs = {"alpha": 1.0} if op == "QuickGelu" else None
            return [emit(g, op, [m["x"]], like=m.node("sigmoid"), domain=domain, attrs=attrs).outputs[0]]

        x = Var("x")
        rule = Rule("SiLU", P("Mul", x, P("Sigmoid", x, name="sigmoid"), name="mul"), rewrite, check, anchor="sigmoid")
        return apply_rules(graph, [rule], ctx).result()


@dataclass(frozen=True)
class FuseBiasGelu(Pass):
    """Bias Add + GELU -> com.microsoft BiasGelu, on ORT CPU.

    Rewrite cases (targets that accept com.microsoft BiasGelu, on ORT CPU unless `force`):
    - Gelu(Add(x, b)) with b a constant 1-D bias over x's last axis, Gelu-20 without approximation or
      com.microsoft Gelu -> BiasGelu(x, b). The projection before it then stays a bias-free MatMul: ORT
      would otherwise fuse MatMul + Add into a Gemm, whose bias pass costs more than BiasGelu's
      (GEGLU gate [4096, 64] x [64, 256]: 2.6 vs 2.8 ms, one thread). Run it after unpack-projections.
    """

    name = "fuse-bias-gelu"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not accepts(ctx, "BiasGelu", MS):
            return PassResult(False, {"BiasGelu": "target does not accept com.microsoft BiasGelu"})
        if not (self.force or ort_cpu(ctx)):
            return PassResult(False, {"BiasGelu": "skipped: only measured on ORT CPU (force=true to fuse)"})

        def check(m: Match, g: Graph, c) -> str | None:
            if m.node("gelu").attr("approximate", "none") not in ("none", b"none"):
                return "tanh-approximated Gelu"
            shape, b = g.type_of(m["x"]).shape, m.const("b")
            if not shape or b.ndim != 1 or shape[-1] != b.shape[0]:
                return f"bias {b.shape} is not 1-D over the last axis of {shape}"
            return None

        def rewrite(m: Match, g: Graph, c):
            g.opsets.setdefault(MS, 1)
            return [emit(g, "BiasGelu", [m["x"], m["b"]], like=m.node("gelu"), domain=MS).outputs[0]]

        rules = [Rule("BiasGelu", P("Gelu", P("Add", Var("x"), Const("b"), name="add"), name="gelu", domain=domain),
                      rewrite, check, form=domain or "Gelu-20") for domain in ("", MS)]
        return apply_rules(graph, rules, ctx).result()


PASSES = [FuseGelu, FuseSiLU, FuseBiasGelu]

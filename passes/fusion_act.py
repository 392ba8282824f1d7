"""Activation fusions: GELU (erf and tanh forms), bias + GELU, GEGLU, and SiLU."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Match, Outcome, P, Rule, Var, apply_rules, emit, ensure_opset, remove_dead

from ._fusion import MS, OpsetGate, accepts, ort_cpu
from .fusion_linear import _parts

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
    """Bias Add + GELU -> com.microsoft BiasGelu (exact GELU) or FastGelu with its bias input (tanh GELU).

    Rewrite cases (targets that accept the op; on ORT CPU unless `force`):
    - Gelu(Add(x, b)) with b a constant 1-D bias over x's last axis: Gelu-20 without approximation or
      com.microsoft Gelu -> BiasGelu(x, b); Gelu-20 approximate="tanh" or com.microsoft FastGelu ->
      FastGelu(x, b). The projection before it then stays a bias-free MatMul: ORT would otherwise fuse
      MatMul + Add into a Gemm, whose bias pass costs more than the activation's own bias read (ORT CPU,
      GEGLU gate [4096, 64] x [64, 256]: 2.6 vs 2.8 ms, one thread; ORT CUDA: the Gemm writes the
      broadcast bias in a kernel of its own before the GEMM reads it back). Run it after unpack-projections.
    """

    name = "fuse-bias-gelu"
    force: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not (accepts(ctx, "BiasGelu", MS) or accepts(ctx, "FastGelu", MS)):
            return PassResult(False, {"BiasGelu": "target accepts neither com.microsoft BiasGelu nor FastGelu"})
        if not (self.force or ort_cpu(ctx)):
            return PassResult(False, {"BiasGelu": "skipped: only measured on ORT CPU (force=true to fuse)"})

        def op_for(m: Match) -> str:
            gelu = m.node("gelu")
            tanh = gelu.op_type == "FastGelu" or gelu.attr("approximate", "none") in ("tanh", b"tanh")
            return "FastGelu" if tanh else "BiasGelu"

        def check(m: Match, g: Graph, c) -> str | None:
            if not accepts(c, op_for(m), MS):
                return f"target does not accept com.microsoft {op_for(m)}"
            shape, b = g.type_of(m["x"]).shape, m.const("b")
            if not shape or b.ndim != 1 or shape[-1] != b.shape[0]:
                return f"bias {b.shape} is not 1-D over the last axis of {shape}"
            return None

        def rewrite(m: Match, g: Graph, c):
            g.opsets.setdefault(MS, 1)
            return [emit(g, op_for(m), [m["x"], m["b"]], like=m.node("gelu"), domain=MS).outputs[0]]

        rules = [Rule("BiasGelu", P(op, P("Add", Var("x"), Const("b"), name="add"), name="gelu", domain=domain,
                                    strict=True), rewrite, check, form=form)
                 for op, domain, form in (("Gelu", "", "Gelu-20"), ("Gelu", MS, MS), ("FastGelu", MS, "FastGelu"))]
        return apply_rules(graph, rules, ctx).result()


# ORT 1.31's CUDA BiasSplitGelu takes only Stable Diffusion's GEGLU widths (bias_split_gelu.cc)
BIAS_SPLIT_GELU_WIDTHS = (2560, 5120, 10240)


@dataclass(frozen=True)
class FuseBiasSplitGelu(Pass):
    """GEGLU -> com.microsoft BiasSplitGelu: the bias Add, the cut into halves, the GELU of the second
    half and the product in one kernel (ORT's CUDA EP; measured on svd-unet:full, H100: the Split alone
    took 19 ms and the Gelu 14 ms of a 197 ms run).

    Rewrite cases (targets that accept com.microsoft BiasSplitGelu):
    - Mul(h1, Gelu(h2)) where h1 = y[..., :n/2], h2 = y[..., n/2:] (Slice or Split readers),
      y = Add(x, b), x 3-D, b a constant bias over the last axis, Gelu exact (Gelu-20 or
      com.microsoft Gelu) -> BiasSplitGelu(x, b).
    Refused: widths n other than 2560, 5120, 10240 (the only ones ORT's kernel takes), halves or y
    read elsewhere.
    """

    name = "fuse-bias-split-gelu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not accepts(ctx, "BiasSplitGelu", MS):
            return PassResult(False, {"BiasSplitGelu": "skipped: target has no com.microsoft BiasSplitGelu"})
        out = Outcome()
        for gelu in [n for n in graph.nodes if n.op_type == "Gelu" and n.attr("approximate", "none") in ("none", b"none")]:
            found = _geglu(graph, gelu)
            if found is None:
                continue
            out.candidates["BiasSplitGelu"] = out.candidates.get("BiasSplitGelu", 0) + 1
            if isinstance(found, str):
                out.details.append({"kind": "refused", "pattern": "BiasSplitGelu", "node": gelu.name, "reason": found})
                continue
            mul, add, x, bias, matched = found
            ensure_opset(graph, MS, 1)
            node = emit(graph, "BiasSplitGelu", [x, graph.add_constant(bias, f"{add.name or 'geglu'}.bias")], like=mul,
                        domain=MS, types=[graph.type_of(mul.outputs[0])])
            graph.replace_all_uses(mul.outputs[0], node.outputs[0])
            remove_dead(graph, matched)
            out.fused["BiasSplitGelu"] = out.fused.get("BiasSplitGelu", 0) + 1
            out.details.append({"kind": "fused", "pattern": "BiasSplitGelu", "node": gelu.name, "nodes": len(matched)})
        return out.result()


def _geglu(graph: Graph, gelu):
    """(mul, add, x, bias, matched nodes) when gelu is GEGLU's gate; a reason when it is GEGLU but
    cannot be rewritten; None when it is not GEGLU."""
    cut = graph.producer(gelu.inputs[0])
    users = graph.consumer_nodes(gelu.outputs[0])
    if cut is None or cut.op_type not in ("Slice", "Split") or len(users) != 1 or users[0].op_type != "Mul":
        return None
    mul = users[0]
    add = graph.producer(cut.inputs[0])
    parts = _parts(graph, cut.inputs[0])
    if add is None or add.op_type != "Add" or not parts or len(parts) != 2:
        return None
    (r1, s1, (a1, b1)), (r2, s2, (a2, b2)) = parts
    n = b2
    if (a1, b1, a2) != (0, n // 2, n // 2) or r2.outputs[s2] != gelu.inputs[0]:
        return None
    h1 = r1.outputs[s1]
    if sorted(mul.inputs) != sorted([h1, gelu.outputs[0]]) or graph.consumer_nodes(h1) != [mul]:
        return None
    k = 0 if graph.is_constant(add.inputs[0]) else 1
    bias, x = graph.constant(add.inputs[k]), add.inputs[1 - k]
    xs = graph.type_of(x).shape
    if bias is None or bias.shape[-1:] != (n,) or any(d != 1 for d in bias.shape[:-1]) or xs is None or len(xs) != 3:
        return "not a bias Add over 3-D projections"
    if n not in BIAS_SPLIT_GELU_WIDTHS:
        return f"width {n}: ORT's CUDA BiasSplitGelu takes only {', '.join(map(str, BIAS_SPLIT_GELU_WIDTHS))}"
    return mul, add, x, bias.reshape(-1), [mul, gelu, r1, r2, add]


PASSES = [FuseGelu, FuseSiLU, FuseBiasGelu, FuseBiasSplitGelu]

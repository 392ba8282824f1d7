"""Normalization fusions: GroupNorm, LayerNorm, RMSNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from onnx import TensorProto

from vidcc.ir import Graph, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Const, Keep, Match, P, Rule, Var, apply_rules, emit

from ._fusion import (OpsetGate, accepts, is_ort, ort_cpu, per_axis, preference, rank_of, reduce_axes,
                      reshape_target, scalar, static)


# ---- the normalization core, in the forms exporters write -----------------------------------------
def _moments(x: Var, axes_name: str):
    """(x - mean(x)) / sqrt(var(x) + eps) with its variants: Pow(d, 2) or Mul(d, d); Div by the
    Sqrt or Mul by its Reciprocal. Yields (pattern of the normalized tensor, form)."""
    for square in ("pow", "mul"):
        for divide in ("div", "recip"):
            mean = P("ReduceMean", x, name="mean")
            d = P("Sub", x, mean, name="centered")
            sq = P("Pow", d, Const("two", value=2.0), name="square") if square == "pow" else P("Mul", d, d, name="square")
            var = P("ReduceMean", sq, name="var")
            std = P("Sqrt", P("Add", var, Const("eps"), name="add_eps"), name="std")
            if divide == "div":
                yield P("Div", d, std, name="normalized"), f"{square}-div"
            else:
                yield P("Mul", d, P("Reciprocal", std, name="rstd"), name="normalized"), f"{square}-recip"


def _moments_ok(m: Match, g: Graph, axes: list[int]) -> str | None:
    """The two ReduceMeans reduce over `axes` (normalized) with keepdims."""
    rank = rank_of(g, m["x"])
    for name in ("mean", "var"):
        node = m.node(name)
        got = reduce_axes(g, node)
        if got is None or rank is None:
            return f"{name} ReduceMean '{node.name}' has unknown axes or rank"
        if sorted(a % rank for a in got) != axes:
            return f"{name} ReduceMean '{node.name}' reduces axes {got}, expected {axes}"
        if not node.attr("keepdims", 1):
            return f"{name} ReduceMean '{node.name}' drops the reduced axes"
    if scalar(g, m["eps"]) is None:
        return "epsilon is not a scalar constant"
    return None


def _affine_tail(core, with_mul: bool, with_add: bool):
    out = core
    if with_mul:
        out = P("Mul", out, Const("gamma"), name="affine_mul")
    if with_add:
        out = P("Add", out, Const("beta"), name="affine_add")
    return out


_AFFINES = [(True, True), (True, False), (False, False)]


# ---- GroupNorm --------------------------------------------------------------------------------------
def _groupnorm_rules(emit_fn) -> list[Rule]:
    rules = []
    x = Var("x")  # the ORT CPU form: the channel affine as one BatchNormalization (see FuseGroupNorm)
    r1 = P("Reshape", x, Var("shape1"), name="reshape1")
    inorm = P("InstanceNormalization", r1, Const("in_scale"), Const("in_bias"), name="inorm")
    r2 = P("Reshape", inorm, Var("shape2"), name="reshape2")
    bn = P("BatchNormalization", r2, Const("bn_scale"), Const("bn_bias"), Const("bn_mean"), Const("bn_var"),
           name="affine_bn")
    rules.append(Rule("GroupNorm", bn, emit_fn, check=_check_groupnorm, anchor="inorm", form="instancenorm-bn"))
    for mul, add in _AFFINES:
        x = Var("x")
        r1 = P("Reshape", x, Var("shape1"), name="reshape1")
        inorm = P("InstanceNormalization", r1, Const("in_scale"), Const("in_bias"), name="inorm")
        r2 = P("Reshape", inorm, Var("shape2"), name="reshape2")
        rules.append(Rule("GroupNorm", _affine_tail(r2, mul, add), emit_fn, check=_check_groupnorm,
                          anchor="inorm", form="instancenorm"))
    for mul, add in _AFFINES:
        for core, form in _moments(Var("g"), "axes"):
            x = Var("x")
            r1 = P("Reshape", x, Var("shape1"), name="reshape1")
            core = _rebind(core, "g", r1)
            r2 = P("Reshape", core, Var("shape2"), name="reshape2")
            rules.append(Rule("GroupNorm", _affine_tail(r2, mul, add), emit_fn, check=_check_groupnorm,
                              anchor="var", form=f"reducemean-{form}"))
    return rules


def _rebind(p, var_name: str, replacement):
    """Replace Var(var_name) leaves of a pattern by another pattern (same object everywhere)."""
    if isinstance(p, Var) and p.name == var_name:
        return replacement
    if isinstance(p, P):
        p.inputs = tuple(_rebind(i, var_name, replacement) for i in p.inputs)
    return p


def _group_params(m: Match, g: Graph):
    """(C, G, eps, scale[C], bias[C]) with the group-level affine of InstanceNormalization folded into
    the channel affine, or a refusal reason (str)."""
    x = m["x"]
    xs = g.type_of(x).shape
    if xs is None or len(xs) < 3 or not isinstance(xs[1], int):
        return f"input '{x}' needs rank >= 3 with a static channel dim, has {g.type_of(x)}"
    rank, C = len(xs), xs[1]
    target = reshape_target(g, m.node("reshape1"))
    r1_shape = g.type_of(m.node("reshape1").outputs[0]).shape
    G = None
    if target is not None and len(target) == 3 and isinstance(target[1], int) and target[1] > 0:
        G = target[1]
    elif r1_shape is not None and len(r1_shape) == 3 and isinstance(r1_shape[1], int):
        G = r1_shape[1]
    if G is None or C % G:
        return f"first Reshape does not split {C} channels into groups ([N, G, -1])"
    if target is not None and (target[0] not in (xs[0], -1) or (target[0] == -1 and target[2] == -1)):
        return f"first Reshape {target} does not keep the batch dim {xs[0]}"
    if target is not None and target[2] != -1 and static(xs) and target[2] != C // G * int(np.prod(xs[2:])):
        return f"first Reshape {target} does not flatten each group"
    why = _restores(g, m.node("reshape2"), x)
    if why:
        return why
    if "inorm" in m:
        s_g, b_g = m.const("in_scale").reshape(-1), m.const("in_bias").reshape(-1)
        if s_g.size != G or b_g.size != G:
            return f"InstanceNormalization has {s_g.size} scales for {G} groups"
        eps = float(m.node("inorm").attr("epsilon", 1e-5))
    else:
        why = _moments_ok(m, g, [2])
        if why:
            return why
        s_g, b_g = np.ones(G, np.float32), np.zeros(G, np.float32)
        eps = scalar(g, m["eps"])
    if "affine_bn" in m:
        affine = _bn_affine(m, g, C)
        if isinstance(affine, str):
            return affine
        gamma, beta = affine
    else:
        gamma = per_axis(m.const("gamma"), rank, 1, C) if "gamma" in m else np.ones(C, np.float32)
        beta = per_axis(m.const("beta"), rank, 1, C) if "beta" in m else np.zeros(C, np.float32)
    if gamma is None or beta is None:
        return "the affine Mul/Add is not per channel"
    per = C // G
    scale = gamma * np.repeat(s_g, per)
    bias = gamma * np.repeat(b_g, per) + beta
    dtype = g.type_of(x).np_dtype
    return C, G, eps, scale.astype(dtype), bias.astype(dtype)


def _bn_affine(m: Match, g: Graph, C: int):
    """(gamma, beta) per channel of an inference BatchNormalization, or why it is not one."""
    bn = m.node("affine_bn")
    if bn.attr("training_mode", 0) or any(o and g.is_used(o) for o in bn.outputs[1:]):
        return "BatchNormalization runs in training mode"
    arrays = [m.const(k).astype(np.float64).reshape(-1) for k in ("bn_scale", "bn_bias", "bn_mean", "bn_var")]
    if any(a.size != C for a in arrays):
        return f"BatchNormalization parameters are not per channel ({C})"
    scale, bias, mean, var = arrays
    gamma = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return gamma, bias - mean * gamma


def _bn_is_plain_affine(m: Match) -> bool:
    """BatchNormalization(mean 0, var 1, epsilon 0): exactly x * scale + bias (what this pass emits)."""
    bn = m.node("affine_bn")
    return bool(np.all(m.const("bn_mean") == 0) and np.all(m.const("bn_var") == 1) and bn.attr("epsilon", 1e-5) == 0)


def _restores(g: Graph, reshape, x: str) -> str | None:
    """The second Reshape gives back x's shape (a constant equal to it, or Shape(x))."""
    shape_src = g.producer(reshape.inputs[1])
    if shape_src is not None and shape_src.op_type == "Shape" and shape_src.inputs[0] == x \
            and shape_src.attr("start", 0) == 0 and shape_src.attr("end") is None:  # dynamo writes start=0
        return None
    xs = g.type_of(x).shape
    target = reshape_target(g, reshape)
    if target is None:
        return "second Reshape's shape is neither constant nor Shape(x)"
    if xs is None or len(target) != len(xs):
        return f"second Reshape {target} does not restore the input shape {xs}"
    unknown = [i for i, (t, d) in enumerate(zip(target, xs)) if t != d]
    if len(unknown) > 1 or (unknown and target[unknown[0]] != -1):
        return f"second Reshape {target} does not restore the input shape {list(xs)}"
    return None


def _check_groupnorm(m: Match, g: Graph, ctx) -> str | None:
    params = _group_params(m, g)
    return params if isinstance(params, str) else None


def _groupnorm_form(ctx, option: str) -> str:
    if option != "auto":
        return option
    pref = preference(ctx, "GroupNorm")
    if pref:
        return pref
    # measured: ORT CPU's GroupNormalization-21 is slower than the InstanceNormalization form
    if is_ort(ctx) or not accepts(ctx, "GroupNormalization"):
        return "InstanceNormalization"
    return "GroupNormalization"


def _affine_form(ctx, option: str) -> str:
    if option != "auto":
        return option
    # measured, ORT CPU one thread: Mul + Add over [4, 64, 32, 32] 0.109 ms, BatchNormalization 0.056 ms
    # (bit-identical with mean 0, var 1, epsilon 0); 52 GroupNorms of svd-unet:small: ~2.5 ms
    return "BatchNormalization" if ort_cpu(ctx) else "Mul-Add"


@dataclass(frozen=True)
class FuseGroupNorm(Pass):
    """Recognise GroupNorm and emit the form the target runs best.

    Rewrite cases (x: [N, C, ...], G groups):
    - Reshape(x,[N,G,-1]) -> InstanceNormalization -> Reshape(back) [-> Mul(gamma) [-> Add(beta)]]
      (TorchScript and dynamo exports of torch.nn.GroupNorm);
    - Reshape -> ReduceMean/Sub/Pow|Mul/ReduceMean/Add(eps)/Sqrt/Div|Reciprocal-Mul -> Reshape
      [-> Mul -> Add] (hand-written GroupNorm);
    emitted as GroupNormalization-21 (per-channel scale/bias; the default domain is raised to 21
    when every op stays valid, else refused with the blocking op), or as the canonical
    Reshape-InstanceNormalization-Reshape-Mul-Add form for ORT (whose GroupNormalization-21 kernel is
    slower) - an InstanceNormalization-form match is then kept as it is. The group-level affine of
    InstanceNormalization is folded into the per-channel scale/bias. Refused: gamma/beta not per
    channel, reshapes that do not split channels into groups or do not restore the shape.
    On ORT CPU the per-channel affine after the InstanceNormalization form is one
    BatchNormalization(scale, bias, mean 0, var 1, epsilon 0) - exactly x * scale + bias in one pass
    instead of Mul and Add (half the time); that form is recognised and kept too.
    `form`: auto (by target), GroupNormalization, InstanceNormalization.
    `affine` (InstanceNormalization form): auto (BatchNormalization on ORT CPU, else Mul-Add),
    Mul-Add, BatchNormalization.
    """

    name = "fuse-groupnorm"
    form: Literal["auto", "GroupNormalization", "InstanceNormalization"] = "auto"
    affine: Literal["auto", "Mul-Add", "BatchNormalization"] = "auto"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        form = _groupnorm_form(ctx, self.form)
        affine = _affine_form(ctx, self.affine)
        gate = OpsetGate(graph)

        def check(m, g, c):
            why = _check_groupnorm(m, g, c)
            if why or form != "GroupNormalization":
                return why
            if not accepts(c, "GroupNormalization"):
                return "target does not accept GroupNormalization"
            block = gate.blocker(21)
            return f"GroupNormalization needs opset 21: {block}" if block else None

        def rewrite(m: Match, g: Graph, c):
            C, G, eps, scale, bias = _group_params(m, g)
            anchor = m.node("inorm") if "inorm" in m else m.node("var")
            if form == "GroupNormalization":
                gate.require("", 21)
                s = g.add_constant(scale, f"{anchor.name or 'groupnorm'}.scale")
                b = g.add_constant(bias, f"{anchor.name or 'groupnorm'}.bias")
                node = emit(g, "GroupNormalization", [m["x"], s, b], like=anchor, attrs={"epsilon": eps, "num_groups": G})
                return [node.outputs[0]]
            if "inorm" in m and _is_canonical(m, g, affine):
                return Keep(f"already Reshape-InstanceNormalization-Reshape-{affine}, the form chosen for the target")
            return [_emit_instancenorm_form(g, m, anchor, C, G, eps, scale, bias, affine)]

        rules = [Rule(r.name, r.pattern, rewrite, check, r.anchor, r.form) for r in _groupnorm_rules(None)]
        return apply_rules(graph, rules, ctx).result()


def _is_canonical(m: Match, g: Graph, affine: str = "Mul-Add") -> bool:
    s, b = m.const("in_scale"), m.const("in_bias")
    if not (np.all(s == 1) and np.all(b == 0)):
        return False
    if affine == "BatchNormalization":
        return "affine_bn" in m and _bn_is_plain_affine(m)
    return "gamma" in m and "beta" in m


def _emit_instancenorm_form(g: Graph, m: Match, anchor, C, G, eps, scale, bias, affine: str = "Mul-Add") -> str:
    x = m["x"]
    xt = g.type_of(x)
    rank = len(xt.shape)
    dtype = xt.np_dtype
    stem = anchor.name or "groupnorm"
    r1 = emit(g, "Reshape", [x, g.add_constant(np.array([0, G, -1], np.int64), f"{stem}.groups")], like=anchor,
              suffix="Reshape", types=[TensorType(xt.dtype, (xt.shape[0], G, None))])
    inorm = emit(g, "InstanceNormalization", [r1.outputs[0], g.add_constant(np.ones(G, dtype), f"{stem}.ones"),
                                              g.add_constant(np.zeros(G, dtype), f"{stem}.zeros")],
                 like=anchor, attrs={"epsilon": eps}, types=[g.type_of(r1.outputs[0])])
    if static(xt.shape):
        back = g.add_constant(np.array(xt.shape, np.int64), f"{stem}.shape")
    else:
        back = emit(g, "Shape", [x], like=anchor, types=[TensorType(TensorProto.INT64, (rank,))]).outputs[0]
    r2 = emit(g, "Reshape", [inorm.outputs[0], back], like=anchor, suffix="Reshape_back", types=[xt])
    if affine == "BatchNormalization":  # mean 0, var 1, epsilon 0: y = x * scale + bias exactly
        ins = [r2.outputs[0], g.add_constant(scale, f"{stem}.scale"), g.add_constant(bias, f"{stem}.bias"),
               g.add_constant(np.zeros(C, dtype), f"{stem}.mean"), g.add_constant(np.ones(C, dtype), f"{stem}.var")]
        return emit(g, "BatchNormalization", ins, like=anchor, attrs={"epsilon": 0.0}, types=[xt]).outputs[0]
    pshape = (C,) + (1,) * (rank - 2)
    mul = emit(g, "Mul", [r2.outputs[0], g.add_constant(scale.reshape(pshape), f"{stem}.scale")], like=anchor, types=[xt])
    add = emit(g, "Add", [mul.outputs[0], g.add_constant(bias.reshape(pshape), f"{stem}.bias")], like=anchor, types=[xt])
    return add.outputs[0]


def _trailing(a: np.ndarray, norm_shape, dtype) -> np.ndarray | None:
    """A parameter that varies only along the trailing normalized dims, as an array of norm_shape."""
    k = len(norm_shape)
    if a.ndim > k:
        if any(d != 1 for d in a.shape[:a.ndim - k]):
            return None
        a = a.reshape(a.shape[a.ndim - k:])
    try:
        return np.broadcast_to(a, tuple(norm_shape)).astype(dtype, copy=True)
    except ValueError:
        return None


# ---- LayerNorm --------------------------------------------------------------------------------------
def _layernorm_rules(rewrite, check) -> list[Rule]:
    rules = []
    for mul, add in _AFFINES:
        for core, form in _moments(Var("x"), "axes"):
            rules.append(Rule("LayerNorm", _affine_tail(core, mul, add), rewrite, check, anchor="centered", form=form))
    return rules


def _trailing_axes(m: Match, g: Graph, reduction: str):
    """The axes the matched reduction normalizes, if they are a trailing block (what LayerNormalization
    and RMSNormalization normalize); else the reason they are not."""
    rank = rank_of(g, m["x"])
    axes = reduce_axes(g, m.node(reduction))
    if rank is None or axes is None:
        return "unknown rank or axes"
    axes = sorted(a % rank for a in axes)
    if axes != list(range(axes[0], rank)):
        return f"reduces axes {axes}, not a trailing block (the fused op normalizes the last axes)"
    return axes


def _ln_axes(m: Match, g: Graph):
    return _trailing_axes(m, g, "mean")


def _ln_params(m: Match, g: Graph):
    axes = _ln_axes(m, g)
    if isinstance(axes, str):
        return axes
    why = _moments_ok(m, g, axes)
    if why:
        return why
    shape = g.type_of(m["x"]).shape
    norm_shape = shape[axes[0]:]
    if not static(norm_shape):
        return f"normalized dims {norm_shape} are not static"
    dtype = g.type_of(m["x"]).np_dtype
    params = []
    for name, default in (("gamma", 1.0), ("beta", 0.0)):
        a = m.const(name) if name in m else np.full(norm_shape, default, dtype)
        p = _trailing(a, norm_shape, dtype)
        if p is None:
            return f"{name} does not broadcast along the normalized dims {list(norm_shape)} only"
        params.append(p)
    return axes[0], scalar(g, m["eps"]), params[0], params[1]


@dataclass(frozen=True)
class FuseLayerNorm(Pass):
    """Fuse decomposed LayerNorm into LayerNormalization-17 (every target runs it).

    Rewrite cases:
    - ReduceMean(x) -> Sub -> Pow(2)|Mul(d,d) -> ReduceMean -> Add(eps) -> Sqrt -> Div|Reciprocal+Mul
      [-> Mul(gamma) [-> Add(beta)]] over a trailing block of axes, keepdims, either Reduce opset form;
    Refused: axes not trailing, gamma/beta varying outside the normalized axes, non-constant eps.
    """

    name = "fuse-layernorm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        def check(m, g, c):
            p = _ln_params(m, g)
            if isinstance(p, str):
                return p
            if not accepts(c, "LayerNormalization"):
                return "target does not accept LayerNormalization"
            return None if g.opsets.get("", 1) >= 17 else "LayerNormalization needs opset 17"

        def rewrite(m, g, c):
            axis, eps, gamma, beta = _ln_params(m, g)
            stem = m.node("var").name or "layernorm"
            node = emit(g, "LayerNormalization", [m["x"], g.add_constant(gamma, f"{stem}.gamma"),
                                                   g.add_constant(beta, f"{stem}.beta")],
                        like=m.node("var"), attrs={"axis": axis, "epsilon": eps})
            return [node.outputs[0]]

        return apply_rules(graph, _layernorm_rules(rewrite, check), ctx).result()


# ---- RMSNorm ----------------------------------------------------------------------------------------
def _rmsnorm_rules(rewrite, check) -> list[Rule]:
    rules = []
    for with_gamma in (True, False):
        for square in ("pow", "mul"):
            for divide in ("div", "recip", "rsqrt-mul"):
                x = Var("x")
                sq = P("Pow", x, Const("two", value=2.0), name="square") if square == "pow" else P("Mul", x, x, name="square")
                ms = P("ReduceMean", sq, name="ms")
                std = P("Sqrt", P("Add", ms, Const("eps"), name="add_eps"), name="std")
                if divide == "div":
                    core = P("Div", x, std, name="normalized")
                else:
                    core = P("Mul", x, P(("Reciprocal",), std, name="rstd"), name="normalized")
                if divide == "rsqrt-mul":  # x * (1 / sqrt(.)) written as Div(1, Sqrt)
                    core = P("Mul", x, P("Div", Const("one", value=1.0), std, name="rstd"), name="normalized")
                out = P("Mul", core, Const("gamma"), name="affine_mul") if with_gamma else core
                rules.append(Rule("RMSNorm", out, rewrite, check, anchor="ms", form=f"{square}-{divide}"))
    return rules


def _rms_params(m: Match, g: Graph):
    axes = _trailing_axes(m, g, "ms")
    if isinstance(axes, str):
        return axes
    if not m.node("ms").attr("keepdims", 1):
        return "ReduceMean drops the reduced axes"
    eps = scalar(g, m["eps"])
    if eps is None:
        return "epsilon is not a scalar constant"
    shape = g.type_of(m["x"]).shape
    norm_shape = shape[axes[0]:]
    if not static(norm_shape):
        return f"normalized dims {norm_shape} are not static"
    dtype = g.type_of(m["x"]).np_dtype
    gamma = _trailing(m.const("gamma") if "gamma" in m else np.ones(norm_shape, dtype), norm_shape, dtype)
    if gamma is None:
        return f"gamma does not broadcast along the normalized dims {list(norm_shape)} only"
    return axes[0], eps, gamma


@dataclass(frozen=True)
class FuseRMSNorm(Pass):
    """Fuse decomposed RMSNorm into RMSNormalization-23.

    Rewrite cases:
    - x / Sqrt(ReduceMean(x^2) + eps), x * Reciprocal(Sqrt(...)) or x * (1 / Sqrt(...)), with x^2 as
      Pow(x, 2) or Mul(x, x), over a trailing block of axes, [-> Mul(gamma)];
    emitted as RMSNormalization-23 when the target accepts it and the default domain can be raised to
    23 (every existing op stays valid); otherwise refused with the reason.
    """

    name = "fuse-rmsnorm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gate = OpsetGate(graph)

        def check(m, g, c):
            p = _rms_params(m, g)
            if isinstance(p, str):
                return p
            if not accepts(c, "RMSNormalization"):
                return "target does not accept RMSNormalization"
            block = gate.blocker(23)
            return f"RMSNormalization needs opset 23: {block}" if block else None

        def rewrite(m, g, c):
            axis, eps, gamma = _rms_params(m, g)
            gate.require("", 23)
            stem = m.node("ms").name or "rmsnorm"
            node = emit(g, "RMSNormalization", [m["x"], g.add_constant(gamma, f"{stem}.gamma")], like=m.node("ms"),
                        attrs={"axis": axis, "epsilon": eps})
            return [node.outputs[0]]

        return apply_rules(graph, _rmsnorm_rules(rewrite, check), ctx).result()


PASSES = [FuseGroupNorm, FuseLayerNorm, FuseRMSNorm]

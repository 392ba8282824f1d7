"""Vectorizable transcendental functions for TVM on the CPU.

LLVM lowers exp/erf/tanh to scalar libm calls (TVM sets no vector math library), so softmax, GELU and
SiLU ran element by element: on the tiny SVD UNet softmax alone took more time than all convolutions.
TVM's own `relax.transform.FastMathTransform` swaps softmax/exp/erf/tanh for TOPI's polynomial
versions (fast_exp, fast_erf, fast_tanh: plain arithmetic, vectorized like any elementwise op; errors
around 1e-7 relative, far inside the exact gate). This extends it to the two ops vidcc's fusions emit
whole, GELU (0.5 x (1 + erf(x / sqrt 2))) and sigmoid (1 / (1 + exp(-x))). float32 only: half keeps
TVM's own lowering, so the fp16 targets judge fp16 numerics unchanged.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, topi
from tvm.relax import PyExprMutator, expr_functor


def _gelu(x):
    half = tvm.tirx.const(0.5, x.dtype)
    inv_sqrt2 = tvm.tirx.const(0.7071067811865476, x.dtype)
    erf = topi.fast_erf(topi.multiply(x, inv_sqrt2))
    return te.compute(x.shape, lambda *i: half * x(*i) * (tvm.tirx.const(1.0, x.dtype) + erf(*i)), name="fast_gelu")


def _sigmoid(x):
    e = topi.fast_exp(topi.negative(x))
    one = tvm.tirx.const(1.0, x.dtype)
    return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="fast_sigmoid")


def _dtype(expr) -> str | None:
    # relax's static type is `ty` in TVM 0.27 (`struct_info` before)
    info = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)
    return getattr(info, "dtype", None)


_FAST = {"relax.nn.softmax", "relax.exp", "relax.erf", "relax.tanh", "relax.nn.gelu", "relax.sigmoid"}


@expr_functor.mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        op = getattr(call.op, "name", "")
        if op not in _FAST or not call.args:
            return call
        if _dtype(call.args[0]) != "float32":
            return call
        x = call.args[0]
        if op == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, x, int(call.attrs.axis))
        if op == "relax.exp":
            return self.builder_.call_te(topi.fast_exp, x)
        if op == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, x)
        if op == "relax.tanh":
            return self.builder_.call_te(topi.fast_tanh, x)
        if op == "relax.nn.gelu":
            return self.builder_.call_te(_gelu, x)
        if op == "relax.sigmoid":
            return self.builder_.call_te(_sigmoid, x)
        return call


@tvm.transform.module_pass(opt_level=0, name="VidccFastMath")
def fast_math(mod, _ctx):
    mutator = _FastMath(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()

"""fp16/bf16 matmul and convolution accumulate in fp32 on TVM, like cuBLAS/cuDNN/TensorRT do.

TVM's ONNX importer gives an fp16 MatMul/Conv an fp16 output, and the legalized kernels then sum in
fp16: over long reductions (attention over 9,216 tokens in svd-unet:small at 576x1024) that cost
tvm-cuda-fp16 its cosine (0.9984 vs fp32, where ORT-CUDA on the same graph reached 0.999996).
This relax pass sets out_dtype=float32 on those calls and casts the result back to fp16/bf16, so the
graph's precision decisions (vidcc's tag-precision) are kept and only the accumulator widens.
"""

from __future__ import annotations

import tvm
from tvm import relax

_CONVS = {"relax.nn.conv1d": relax.op.nn.conv1d, "relax.nn.conv2d": relax.op.nn.conv2d,
          "relax.nn.conv3d": relax.op.nn.conv3d}
_CONV_ATTRS = ("strides", "padding", "dilation", "groups", "data_layout", "kernel_layout", "out_layout")


LOW = ("float16", "bfloat16")


def _low_dtype(expr) -> str | None:
    dtype = str(getattr(expr.ty, "dtype", ""))  # TVM 0.27 calls struct info `ty`
    return dtype if dtype in LOW else None


@relax.expr_functor.mutator
class _Widen(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.builder_.normalize(super().visit_call_(call))
        name = getattr(call.op, "name", "")
        if name not in _CONVS and name != "relax.matmul":
            return call
        low = _low_dtype(call)
        if low is None or any(_low_dtype(a) != low for a in call.args[:2]):
            return call
        if name == "relax.matmul":
            wide = relax.op.matmul(call.args[0], call.args[1], out_dtype="float32")
        else:
            attrs = {k: getattr(call.attrs, k) for k in _CONV_ATTRS}
            wide = _CONVS[name](call.args[0], call.args[1], out_dtype="float32", **attrs)
        return relax.op.astype(wide, low)


@tvm.transform.module_pass(opt_level=0, name="vidcc_fp32_accumulation")
def fp32_accumulation(mod, _ctx):
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Widen(mod).visit_expr(func)
    return mod

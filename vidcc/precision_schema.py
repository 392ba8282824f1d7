"""What the precision passes need to know about dtypes and op type constraints.

An ONNX op types its inputs and outputs through type parameters (`T`, `T1`, `U`, ...) or fixed types
(`tensor(int64)`). Lowering a node to fp16 means re-binding the parameters that carry float32 to
float16 -- and nothing else: Resize's `scales` stays float32, LayerNormalization's Mean/InvStdDev
(`U`) stay float32, shape inputs stay int64. `binding(node)` reads that from the op schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ml_dtypes
import numpy as np
import onnx.defs
from onnx import TensorProto as T

LOW_DTYPES = {"fp16": T.FLOAT16, "bf16": T.BFLOAT16}
NAMES = {T.FLOAT: "fp32", T.FLOAT16: "fp16", T.BFLOAT16: "bf16", T.DOUBLE: "fp64"}
NP_DTYPES = {T.FLOAT: np.dtype(np.float32), T.FLOAT16: np.dtype(np.float16),
             T.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}
MAX_FINITE = {T.FLOAT16: 65504.0, T.BFLOAT16: float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),
              T.FLOAT: float(np.finfo(np.float32).max)}
ANY = None  # a parameter whose allowed types are unknown (no schema): assume it takes any float


def _type_str_dtype(s: str) -> int | None:
    """'tensor(float16)' -> FLOAT16; anything not a plain tensor type -> None."""
    if not s.startswith("tensor(") or not s.endswith(")"):
        return None
    name = s[7:-1].upper()
    name = {"FLOAT": "FLOAT", "DOUBLE": "DOUBLE"}.get(name, name)
    try:
        return T.DataType.Value(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class Binding:
    """Per input/output slot, the name of its type parameter (a fixed type gets its own name
    '=tensor(float)'), and what each parameter may be."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    allowed: dict  # param -> frozenset of dtypes, or ANY

    def slots(self, param: str) -> tuple[list[int], list[int]]:
        return ([i for i, p in enumerate(self.inputs) if p == param],
                [i for i, p in enumerate(self.outputs) if p == param])

    def allows(self, param: str, dtype: int) -> bool:
        a = self.allowed.get(param, ANY)
        return a is ANY or dtype in a

    def is_free(self, param: str) -> bool:
        """A parameter only inputs carry: the op's outputs do not depend on which type it is."""
        return param not in self.outputs and not param.startswith("=")


@lru_cache(maxsize=4096)
def _schema(op: str, domain: str, version: int):
    try:
        return onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return None


def schema_of(op: str, domain: str, opsets: dict[str, int]):
    domain = "" if domain == "ai.onnx" else domain
    version = opsets.get(domain, opsets.get("ai.onnx", 1) if domain == "" else 1)
    return _schema(op, domain, version)


def _map_slots(formals, count: int) -> list:
    out = []
    for i in range(count):
        if i < len(formals):
            out.append(formals[i])
        elif formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            out.append(formals[-1])
        else:
            out.append(None)
    return out


# Contrib ops whose kernels pin some slots (the types ORT's CUDA kernels are registered for):
# - GroupNorm: fp16 or fp32 x, fp32 gamma/beta; SkipGroupNorm the same, its skip, bias and sum output typed like x
#   (contrib_ops/cuda/diffusion/group_norm.cc: `#define GROUP_NORM_TYPES float, MLFloat16`);
# - SkipLayerNormalization: input, skip, gamma, beta, bias and the sum output of the input's type, Mean/InvStdDev
#   float; also bf16 (contrib_ops/cuda/cuda_contrib_kernels.cc: `(1, BFloat16, SkipLayerNormalization)`);
# - BiasAdd: input, bias, skip and output of one type, float or fp16 (contrib_ops/cuda/diffusion/bias_add.cc).
_HALF_OR_FLOAT = {"T": frozenset({T.FLOAT, T.FLOAT16}), "=tensor(float)": frozenset({T.FLOAT})}
_ANY_FLOAT = {**_HALF_OR_FLOAT, "T": frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16})}
_CONTRIB = {
    ("com.microsoft", "GroupNorm"): Binding(("T", "=tensor(float)", "=tensor(float)"), ("T",), _HALF_OR_FLOAT),
    ("com.microsoft", "SkipGroupNorm"): Binding(("T", "=tensor(float)", "=tensor(float)", "T", "T"), ("T", "T"),
                                                _HALF_OR_FLOAT),
    ("com.microsoft", "SkipLayerNormalization"): Binding(("T",) * 5, ("T", "=tensor(float)", "=tensor(float)", "T"),
                                                         _ANY_FLOAT),
    ("com.microsoft", "BiasAdd"): Binding(("T",) * 3, ("T",), {"T": _HALF_OR_FLOAT["T"]}),
}


def binding(op: str, domain: str, n_in: int, n_out: int, opsets: dict[str, int]) -> Binding:
    """Type parameters of a node's slots. Without a schema (contrib ops), every slot shares one
    parameter 'T' of unknown allowed types: the common case of ops that compute in one float type."""
    if (domain, op) in _CONTRIB:  # optional trailing slots (SkipGroupNorm's bias, sum) may be absent
        b = _CONTRIB[(domain, op)]
        return Binding(b.inputs[:n_in], b.outputs[:n_out], b.allowed)
    schema = schema_of(op, domain, opsets)
    if schema is None:
        return Binding(("T",) * n_in, ("T",) * n_out, {"T": ANY})
    allowed: dict = {}
    for tc in schema.type_constraints:
        dts = {_type_str_dtype(s) for s in tc.allowed_type_strs}
        allowed[tc.type_param_str] = frozenset(d for d in dts if d is not None)

    def params(formals, count):
        names = []
        for f in _map_slots(formals, count):
            if f is None:
                names.append("?")
            elif f.type_str in allowed:
                names.append(f.type_str)
            else:
                fixed = _type_str_dtype(f.type_str)
                name = "=" + f.type_str
                allowed[name] = frozenset({fixed}) if fixed is not None else frozenset()
                names.append(name)
        return tuple(names)

    return Binding(params(schema.inputs, n_in), params(schema.outputs, n_out), allowed)


def node_binding(graph, node) -> Binding:
    return binding(node.op_type, node.domain, len(node.inputs), len(node.outputs), graph.opsets)


def first_opset_allowing(op: str, domain: str, params: set[str], dtype: int, start: int, stop: int = 23) -> int | None:
    """The first default-domain opset in (start, stop] at which the op's `params` accept `dtype`."""
    if domain not in ("", "ai.onnx"):
        return None
    for v in range(start + 1, stop + 1):
        s = _schema(op, "", v)
        if s is None:
            return None
        ok = all(any(dtype == _type_str_dtype(t) for t in tc.allowed_type_strs)
                 for tc in s.type_constraints if tc.type_param_str in params)
        if ok:
            return v
    return None


def to_dtype(array: np.ndarray, dtype: int) -> np.ndarray:
    """Convert float values to a low dtype, saturating at its largest finite value (an out-of-range
    weight becomes +-max, not inf)."""
    target = NP_DTYPES[dtype]
    m = MAX_FINITE[dtype]
    a = np.asarray(array)
    if a.dtype == target:
        return a
    finite = np.isfinite(a)
    clipped = np.where(finite, np.clip(a, -m, m), a)
    return clipped.astype(target)

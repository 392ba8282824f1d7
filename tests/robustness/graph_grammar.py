"""A hypothesis strategy for random valid ONNX graphs built from the ops vidcc's passes touch:
elementwise math, Identity/Cast chains, duplicated subexpressions, constant subgraphs, shape
bookkeeping (Shape-Gather-Unsqueeze-Concat-Reshape), Transpose, MatMul, Concat/Split.
Shared by the CI fuzz test and bench/fuzz.py (a longer run)."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper, numpy_helper

N, C = 2, 4  # every value tensor is float32 [N, C]; shape bookkeeping rebuilds that shape


@st.composite
def graphs(draw, max_ops: int = 14) -> onnx.ModelProto:
    nodes, inits = [], []
    values = ["x"]
    counter = [0]

    def fresh(stem):
        counter[0] += 1
        return f"{stem}{counter[0]}"

    def const(array, stem="c"):
        name = fresh(stem)
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def pick():
        return draw(st.sampled_from(values))

    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(["unary", "binary", "binary_const", "identity", "cast_chain", "duplicate",
                                     "const_subgraph", "shape_reshape", "transpose_pair", "matmul", "concat_split"]))
        out = fresh("v")
        if kind == "unary":
            op = draw(st.sampled_from(["Relu", "Sigmoid", "Neg", "Abs", "Tanh"]))
            nodes.append(helper.make_node(op, [pick()], [out]))
        elif kind == "binary":
            op = draw(st.sampled_from(["Add", "Mul", "Sub", "Max"]))
            nodes.append(helper.make_node(op, [pick(), pick()], [out]))
        elif kind == "binary_const":
            shape = draw(st.sampled_from([(C,), (N, C), (1, C), ()]))
            value = draw(st.floats(-2, 2, allow_nan=False, width=32))
            nodes.append(helper.make_node(draw(st.sampled_from(["Add", "Mul"])), [pick(), const(np.full(shape, value, np.float32))], [out]))
        elif kind == "identity":
            nodes.append(helper.make_node("Identity", [pick()], [out]))
        elif kind == "cast_chain":
            mid = fresh("cast")
            nodes.append(helper.make_node("Cast", [pick()], [mid], to=draw(st.sampled_from([T.FLOAT, T.DOUBLE]))))
            nodes.append(helper.make_node("Cast", [mid], [out], to=T.FLOAT))
        elif kind == "duplicate":  # the same expression twice: CSE material
            src, op = pick(), draw(st.sampled_from(["Relu", "Sigmoid"]))
            a, b = fresh("dup"), fresh("dup")
            nodes += [helper.make_node(op, [src], [a]), helper.make_node(op, [src], [b]), helper.make_node("Add", [a, b], [out])]
        elif kind == "const_subgraph":  # foldable: only constants in
            k = fresh("k")
            nodes.append(helper.make_node("Mul", [const(np.arange(C, dtype=np.float32)), const(np.float32(0.5))], [k]))
            nodes.append(helper.make_node("Add", [pick(), k], [out]))
        elif kind == "shape_reshape":  # exporter-style bookkeeping around a Reshape
            src = pick()
            s, d0, d1, u0, u1, shp, flat = (fresh(p) for p in ("shape", "d", "d", "u", "u", "shp", "flat"))
            nodes += [
                helper.make_node("Shape", [src], [s]),
                helper.make_node("Gather", [s, const(np.int64(0), "i")], [d0], axis=0),
                helper.make_node("Gather", [s, const(np.int64(1), "i")], [d1], axis=0),
                helper.make_node("Unsqueeze", [d0, const(np.array([0], np.int64), "ax")], [u0]),
                helper.make_node("Unsqueeze", [d1, const(np.array([0], np.int64), "ax")], [u1]),
                helper.make_node("Concat", [u0, u1], [shp], axis=0),
                helper.make_node("Reshape", [src, const(np.array([-1], np.int64), "m1")], [flat]),
                helper.make_node("Reshape", [flat, shp], [out]),
            ]
        elif kind == "transpose_pair":
            mid = fresh("t")
            nodes += [helper.make_node("Transpose", [pick()], [mid], perm=[1, 0]),
                      helper.make_node("Transpose", [mid], [out], perm=[1, 0])]
        elif kind == "matmul":
            w = np.asarray(draw(st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=C * C, max_size=C * C)), np.float32)
            nodes.append(helper.make_node("MatMul", [pick(), const(w.reshape(C, C), "w")], [out]))
        else:
            cat, a, b = fresh("cat"), fresh("s"), fresh("s")
            nodes += [helper.make_node("Concat", [pick(), pick()], [cat], axis=1),
                      helper.make_node("Split", [cat, const(np.array([C, C], np.int64), "sp")], [a, b], axis=1),
                      helper.make_node("Add", [a, b], [out])]
        values.append(out)
    n_out = draw(st.integers(1, min(3, len(values) - 1)))
    outputs = draw(st.lists(st.sampled_from(values[1:]), min_size=n_out, max_size=n_out, unique=True))
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", T.FLOAT, [N, C])],
                              [helper.make_tensor_value_info(o, T.FLOAT, [N, C]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

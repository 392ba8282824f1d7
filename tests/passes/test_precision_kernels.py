"""tag-precision / materialize-precision against the compile target's reduced-precision kernels
(`Target.low_kernels`): an op the backend cannot compute in the low dtype stays fp32, and a reader of a
free type parameter (Equal) is fed a type the backend has a kernel for."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model
from vidcc import onnx_io, plugins
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.target import KernelTable, Target

SPEC = "tag-precision{dtype=bf16,calibrate=false},materialize-precision"


def _model() -> onnx.ModelProto:
    """x -> MatMul -> a; ReduceMean(a) + c -> r; Equal(a, 0) -> e; LayerNormalization(a) -> n."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w": rng.standard_normal((16, 16)).astype(np.float32), "c": np.ones(1, np.float32),
        "zero": np.zeros(1, np.float32), "axes": np.array([2], np.int64),
        "g": np.ones(16, np.float32), "b": np.zeros(16, np.float32)}.items()]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("ReduceMean", ["a", "axes"], ["m"], name="mean"),
             helper.make_node("Add", ["m", "c"], ["r"], name="add"),
             helper.make_node("Equal", ["a", "zero"], ["e"], name="eq"),
             helper.make_node("LayerNormalization", ["a", "g", "b"], ["n"], name="ln", axis=-1)]
    outs = [helper.make_tensor_value_info("r", T.FLOAT, [1, 8, 1]), helper.make_tensor_value_info("e", T.BOOL, [1, 8, 16]),
            helper.make_tensor_value_info("n", T.FLOAT, [1, 8, 16])]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [1, 8, 16])], outs, inits, opset=18)


def _run(target):
    g = onnx_io.from_proto(_model())
    ctx = PassContext(target=target, verify_each=True)
    run_pipeline(g, SPEC, ctx)
    onnx.checker.check_model(onnx_io.to_proto(g), full_check=True)
    rules = {d["node"]: d.get("rule") for d in ctx.log[0].details}
    return g, {n.name: n.precision for n in g.nodes if n.name}, rules


def _reads(g, name: str) -> int:
    node = next(n for n in g.nodes if n.name == name)
    return g.type_of(node.inputs[0]).dtype


def test_without_kernel_facts_every_admitted_op_goes_low():
    g, prec, _ = _run(None)
    assert prec["mm"] == prec["mean"] == prec["ln"] == "bf16"
    assert _reads(g, "eq") == T.BFLOAT16  # a free parameter takes what it is given


def test_ort_cuda_bf16_keeps_ops_without_bf16_kernels_fp32():
    target = plugins.registry().targets["ort-cuda-bf16"].obj
    g, prec, rules = _run(target)
    assert prec["mm"] == prec["ln"] == "bf16"  # MatMul-13, LayerNormalization: BFloat16 CUDA kernels
    assert prec["mean"] == "fp32" and rules["mean"] == "target"  # ORT's CUDA ReduceMean: no BFloat16
    assert _reads(g, "eq") == T.FLOAT  # no BFloat16 CUDA Equal: it is fed a cast to fp32


def test_tvm_keeps_layernorm_fp32_in_bf16():
    target = plugins.registry().targets["tvm-cuda-bf16"].obj
    _, prec, rules = _run(target)
    assert prec["ln"] == "fp32" and rules["ln"] == "target"
    assert prec["mm"] == prec["mean"] == "bf16"


def test_kernel_table_first_opset_and_force_low():
    table = KernelTable({("", "Conv"): 22, ("", "Resize"): None}, others=True)
    assert table.has("Conv", "", 22) and not table.has("Conv", "", 21) and not table.has("Resize")
    assert table.has("MatMul", "ai.onnx", 13)
    target = Target("t", low_kernels={"bf16": KernelTable({("", "ReduceMean"): None}, others=True)})
    g = onnx_io.from_proto(_model())
    run_pipeline(g, "tag-precision{dtype=bf16,calibrate=false,force_low=[ReduceMean]}", PassContext(target=target))
    assert {n.name: n.precision for n in g.nodes}["mean"] == "fp32"  # the backend could not run it low

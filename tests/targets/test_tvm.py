"""The TVM targets: import, default schedules, static shapes, fp16, tuning database."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model
from tests.targets.conftest import zoo_export
from vidcc import plugins
from vidcc.compile import compile_model
from vidcc.errors import TargetError

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed")


def _save(tmp_path, name, model, feeds):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / f"{name}.inputs.npz", **feeds)
    return str(path)


def test_tvm_llvm_compiles_verifies_and_reproduces(cnn_path):
    result = compile_model(str(cnn_path), "tvm-llvm")
    assert result.verdict.passed and result.verdict.gate.kind == "exact"
    build = result.manifest["build"]
    assert build["library"] == "model.so" and build["static_shapes"] == {"x": [1, 4, 8, 8]}
    assert build["tvm_target"]["kind"] == "llvm" and "num-cores" in build["tvm_target"]
    out = result.artifact.runner().run(result.artifact.sample_inputs())
    assert np.array_equal(out["y"], result.artifact.verified_outputs()["y"])


def test_symbolic_dims_are_bound_to_the_sample_shapes(cnn_dynamic_path):
    result = compile_model(str(cnn_dynamic_path), "tvm-llvm")
    assert result.verdict.passed
    assert result.manifest["build"]["static_shapes"] == {"x": [2, 4, 8, 8]}
    with pytest.raises(TargetError, match=r"static shapes: input 'x' must be \[2, 4, 8, 8\]"):
        result.artifact.runner().run({"x": np.zeros((3, 4, 8, 8), np.float32)})


@pytest.mark.parametrize("case", ["batched-matmul", "conv3d", "layernorm-gelu", "groupnorm-silu", "attention"])
def test_default_schedules_are_exact(tmp_path, case):
    rng = np.random.default_rng(0)
    f = np.float32
    if case == "batched-matmul":  # both operands activations; B's inner axis is the vector axis
        nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
        ins = {"a": rng.standard_normal((3, 20, 24)).astype(f), "b": rng.standard_normal((3, 24, 40)).astype(f)}
        inits = []
        out = (3, 20, 40)
    elif case == "conv3d":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 0, 1, 0, 0])]
        ins = {"x": rng.standard_normal((1, 6, 4, 5, 7)).astype(f)}
        inits = [numpy_helper.from_array(rng.standard_normal((12, 6, 3, 1, 1)).astype(f), "w")]
        out = (1, 12, 4, 5, 7)
    elif case == "layernorm-gelu":
        nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1),
                 helper.make_node("Gelu", ["n"], ["y"], domain="")]
        ins = {"x": rng.standard_normal((2, 33, 64)).astype(f)}
        inits = [numpy_helper.from_array(rng.standard_normal(64).astype(f), n) for n in ("g", "b")]
        out = (2, 33, 64)
    elif case == "groupnorm-silu":
        nodes = [helper.make_node("GroupNormalization", ["x", "g", "b"], ["n"], num_groups=4, epsilon=1e-5),
                 helper.make_node("Sigmoid", ["n"], ["s"]), helper.make_node("Mul", ["n", "s"], ["y"])]
        ins = {"x": rng.standard_normal((1, 16, 8, 8)).astype(f)}
        inits = [numpy_helper.from_array(rng.standard_normal(16).astype(f), n) for n in ("g", "b")]
        out = (1, 16, 8, 8)
    else:  # softmax(q k^T / sqrt d) v
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]),
                 helper.make_node("Mul", ["s", "scale"], ["ss"]),
                 helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "v"], ["y"])]
        ins = {n: rng.standard_normal((4, 64, 16)).astype(f) for n in ("q", "k", "v")}
        inits = [numpy_helper.from_array(np.array(0.25, f), "scale")]
        out = (4, 64, 16)
    opset = 21 if case == "groupnorm-silu" else 20
    model = make_model(nodes, [helper.make_tensor_value_info(n, T.FLOAT, a.shape) for n, a in ins.items()],
                       [helper.make_tensor_value_info("y", T.FLOAT, out)], inits, opset=opset, ir_version=10)
    result = compile_model(_save(tmp_path, case, model, ins), "tvm-llvm")
    assert result.verdict.passed, result.verdict.failures


def test_rules_schedule_the_heavy_ops():
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from vidcc.targets._tvm_fastmath import fast_math
    from vidcc.targets._tvm_schedule import Contraction, RowReduction

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["y"], axis=-1)]
    w = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    model = make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 16, 16])],
                       [helper.make_tensor_value_info("y", T.FLOAT, [1, 8, 16, 16])], [w])
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    with target:
        mod = tvm.transform.Sequential([fast_math, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(from_onnx(model))
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    conv = next(f for n, f in funcs.items() if "conv2d" in n)
    softmax = next(f for n, f in funcs.items() if "softmax" in n)
    assert Contraction(256).apply(conv, target, False) is not None
    assert RowReduction(256).apply(softmax, target, False) is not None
    assert Contraction(256).apply(softmax, target, False) is None  # declines, never breaks


def test_cpu_detection(monkeypatch):
    from vidcc.targets import tvm as tvm_target

    monkeypatch.setattr(tvm_target.platform, "machine", lambda: "x86_64")
    for flags, expected in ((set(), ("x86-64", 128)),
                            ({"sse4_2", "popcnt", "ssse3"}, ("x86-64-v2", 128)),
                            ({"sse4_2", "popcnt", "ssse3", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}, ("x86-64-v3", 256)),
                            ({"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "avx512f", "avx512bw", "avx512cd",
                              "avx512dq", "avx512vl"}, ("x86-64-v4", 512))):
        monkeypatch.setattr(tvm_target, "cpu_features", lambda flags=flags: flags)
        assert tvm_target.detect_cpu() == expected
    target = plugins.registry().targets["tvm-llvm"].obj
    assert target.target_json()["mcpu"] == "x86-64-v4"  # never "native"


def test_fusions_emit_only_what_tvm_imports():
    target = plugins.registry().targets["tvm-llvm"].obj
    assert target.supports("GroupNormalization") and target.supports("LayerNormalization")
    assert not target.supports("Attention") and not target.supports("MultiHeadAttention", "com.microsoft")


def test_tvm_llvm_fp16_computes_in_half(cnn_path):
    result = compile_model(str(cnn_path), "tvm-llvm-fp16")
    assert result.verdict.gate.kind == "fp16" and result.verdict.passed, result.verdict.failures
    model = onnx.load(result.artifact.path / "model.onnx")
    assert any(t.data_type == T.FLOAT16 for t in model.graph.initializer)
    assert 1e-5 < result.metrics["y"].max_rel  # really half, not fp32 in disguise


def test_cuda_targets_need_a_gpu():
    if tvm.cuda().exist:
        pytest.skip("a CUDA device is present")
    for name in ("tvm-cuda", "tvm-cuda-fp16"):
        a = plugins.registry().targets[name].obj.available()
        assert not a and "CUDA" in a.reason


@pytest.mark.slow
def test_tuning_fills_the_database_and_compiles_apply_it(cnn_path):
    from vidcc.compile import tune_model

    before = compile_model(str(cnn_path), "tvm-llvm")
    report = tune_model(str(cnn_path), "tvm-llvm", 45)
    assert report["tasks"] and report["tasks"][0]["trials"] >= 16
    assert report["tasks"][0]["best_after_us"] <= report["tasks"][0]["default_us"] * 1.5
    after = compile_model(str(cnn_path), "tvm-llvm")
    assert not after.cached and after.artifact.key != before.artifact.key  # the database is in the key
    assert after.manifest["build"]["tuning_records_applied"] > 0 and after.verdict.passed


@pytest.mark.slow
def test_tvm_llvm_on_tiny_svd():
    if zoo_export() is None:
        pytest.skip("vidcc.zoo has not landed yet")
    result = compile_model("svd-unet:tiny", "tvm-llvm")
    assert result.verdict.passed, result.verdict.failures
    out = result.artifact.runner().run(result.artifact.sample_inputs())
    for name, ref in result.artifact.verified_outputs().items():
        assert np.array_equal(out[name], ref)


def test_fp16_matmul_and_conv_accumulate_in_fp32():
    from tvm import relax
    from tvm.script import relax as R

    from vidcc.targets._tvm_accumulate import fp32_accumulation

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((4, 9216), "float16"), w: R.Tensor((9216, 8), "float16"),
                 img: R.Tensor((1, 8, 6, 6), "float16"), k: R.Tensor((4, 8, 3, 3), "float16"),
                 a: R.Tensor((2, 3), "float32"), b: R.Tensor((3, 2), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                c = R.nn.conv2d(img, k, padding=(1, 1))
                f = R.matmul(a, b)  # fp32 stays as it is
                R.output(y, c, f)
            return (y, c, f)

    text = fp32_accumulation(Mod).script()
    assert text.count('out_dtype="float32"') == 2 and text.count("R.astype") == 2
    assert "padding=[1, 1, 1, 1]" in text.replace("(", "[").replace(")", "]")  # conv attributes kept
    rng = np.random.default_rng(0)
    args = [rng.random(s).astype(np.float16) for s in [(4, 9216), (9216, 8), (1, 8, 6, 6), (4, 8, 3, 3)]]
    args += [rng.random(s).astype(np.float32) for s in [(2, 3), (3, 2)]]
    vm = relax.VirtualMachine(tvm.compile(fp32_accumulation(Mod), target="llvm"), tvm.cpu())
    y = vm["main"](*[tvm.runtime.tensor(v) for v in args])[0].numpy()
    exact = (args[0].astype(np.float64) @ args[1].astype(np.float64)).astype(np.float16)
    assert y.dtype == np.float16 and np.all(np.abs(y.astype(np.float64) - exact) <= np.spacing(exact))  # within one fp16 ulp

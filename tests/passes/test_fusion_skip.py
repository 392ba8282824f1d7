"""fuse-skip-bias: the transformer blocks' residual Adds and projection biases into com.microsoft
SkipLayerNormalization and BiasAdd (ORT's CUDA EP).

The fused graphs are checked against the original on ORT CPU: directly where they hold only
SkipLayerNormalization (ORT CPU has a kernel), else with onnx's reference evaluator and the CUDA-only ops
implemented in tests/passes/test_ort_cuda_forms.py (BiasAdd in numpy, asserting the CUDA kernel's shapes)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto as T
from onnx import helper

from tests.conftest import make_model, run_ort
from tests.passes.fusion_helpers import assert_close, rand
from tests.passes.test_fusion_units import init
from tests.passes.test_ort_cuda_forms import run_reference
from vidcc import onnx_io, plugins
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline

V = helper.make_tensor_value_info
mk = helper.make_node


def transformer_block(C=320, B=2, S=6, one_key=True, flip=False) -> onnx.ModelProto:
    """diffusers' BasicTransformerBlock after vidcc's attention fusions, attention stood in for by a MatMul:
    h0 = proj_in(x) (+ bias); h1 = to_out(attn1(norm1(h0))) + h0; h2 = to_out2(attn2(norm2(h1))) + h1;
    y = ff(norm3(h2)) + h2. `one_key`: SVD's cross-attention over one token, folded to the projection of that
    token, a [B, 1, C] row broadcast into the residual (norm2 then has no reader and is gone). The legacy
    exporter writes Linear as Add(bias, MatMul) (`flip`: dynamo's Add(MatMul, bias))."""
    nodes, inits = [], []

    def linear(x, name, cin, cout, bias=True):
        inits.append(init(f"{name}.w", rand(cin, cout, seed=len(inits) + 1) * np.float32(0.5 / np.sqrt(cin))))
        nodes.append(mk("MatMul", [x, f"{name}.w"], [f"{name}.mm"]))
        if not bias:
            return f"{name}.mm"
        inits.append(init(f"{name}.b", rand(cout, seed=len(inits) + 1) * 0.1))
        nodes.append(mk("Add", [f"{name}.mm", f"{name}.b"] if flip else [f"{name}.b", f"{name}.mm"], [name]))
        return name

    def norm(x, name):
        inits.extend([init(f"{name}.g", 1 + 0.1 * rand(C, seed=len(inits) + 1)),
                      init(f"{name}.beta", 0.1 * rand(C, seed=len(inits) + 2))])
        nodes.append(mk("LayerNormalization", [x, f"{name}.g", f"{name}.beta"], [name], axis=-1, epsilon=1e-5))
        return name

    h0 = linear("x", "proj_in", C, C)
    a1 = linear(linear(norm(h0, "norm1"), "attn1", C, C, bias=False), "to_out", C, C)
    nodes.append(mk("Add", [a1, h0], ["h1"]))
    if one_key:
        a2 = linear(linear("enc", "to_v", 8, C, bias=False), "to_out2", C, C)  # [B, 1, C]
    else:
        a2 = linear(linear(norm("h1", "norm2"), "attn2", C, C, bias=False), "to_out2", C, C)
    nodes.append(mk("Add", [a2, "h1"], ["h2"]))
    f = linear(mk_relu(nodes, linear(norm("h2", "norm3"), "ff1", C, 2 * C, bias=False)), "ff2", 2 * C, C)
    nodes.append(mk("Add", [f, "h2"], ["y"]))
    inputs = [V("x", T.FLOAT, [B, S, C])] + ([V("enc", T.FLOAT, [B, 1, 8])] if one_key else [])
    return make_model(nodes, inputs, [V("y", T.FLOAT, [B, S, C])], inits, opset=17)


def mk_relu(nodes, x):
    nodes.append(mk("Relu", [x], [f"{x}.relu"]))
    return f"{x}.relu"


def _feeds(model):
    return {i.name: rand(*[d.dim_value for d in i.type.tensor_type.shape.dim], seed=7 + k)
            for k, i in enumerate(model.graph.input)}


def _compile(model, target="ort-cuda", spec="fuse-skip-bias,dce"):
    graph = onnx_io.from_proto(model)
    ctx = PassContext(target=plugins.registry().targets[target].obj, verify_each=True)
    run_pipeline(graph, spec, ctx)
    verify(graph)
    return graph, ctx.log[0]


def _reasons(result, pattern):
    return [d["reason"] for d in result.details if d["kind"] == "refused" and d["pattern"] == pattern]


@pytest.mark.parametrize("flip", [False, True])
def test_svd_block_folds_its_residuals_and_biases(flip):
    """SVD's spatial block at 320 channels: norm3 reads (to_out(a1) + h0) + to_out2(v)[B, 1, C]: one
    SkipLayerNormalization with to_out's MatMul as input, h0 + the broadcast row as skip, both biases as
    its bias, its sum output the FF residual's skip; the FF's MatMul + bias + residual one BiasAdd.
    norm1 reads proj_in(x) + bias, no residual: left. Every projection but proj_in is bias-free."""
    model = transformer_block(flip=flip)
    graph, result = _compile(model)
    assert result.stats["SkipLayerNorm"] == "1/2" and result.stats["BiasAdd"] == "1/1"
    assert result.stats["SkipLayerNorm with bias"] == 1 and result.stats["SkipLayerNorm with sum output"] == 1
    (sln,) = graph.nodes_by_op("SkipLayerNormalization", "com.microsoft")
    (bias_add,) = graph.nodes_by_op("BiasAdd", "com.microsoft")
    assert graph.producer(sln.inputs[0]).op_type == "MatMul"  # to_out, bias-free
    assert graph.producer(sln.inputs[1]).op_type == "Add"  # h0 + the [B, 1, C] row
    biases = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".b")}
    np.testing.assert_allclose(graph.constant(sln.inputs[4]), biases["to_out.b"] + biases["to_out2.b"], rtol=1e-6)
    assert bias_add.inputs[2] == sln.outputs[3] and graph.producer(bias_add.inputs[0]).op_type == "MatMul"
    assert bias_add.outputs[0] == "y"  # the graph output keeps its name
    assert graph.op_histogram()["Add"] == 2  # proj_in's bias (norm1 reads it) and the skip's broadcast row
    assert "the sum it normalizes has 1 term(s) of the input's shape [2, 6, 320] and a per-channel constant" \
        in _reasons(result, "SkipLayerNorm")[0]
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_block_with_full_cross_attention_fuses_each_norm():
    """AnimateDiff's blocks (cross-attention over 77 tokens): norm2 and norm3 each read attention + bias +
    residual, whose sum the next residual reads from the fourth output."""
    model = transformer_block(one_key=False)
    graph, result = _compile(model)
    assert result.stats["SkipLayerNorm"] == "2/3" and result.stats["SkipLayerNorm with sum output"] == 2
    assert result.stats["BiasAdd"] == "1/1"
    for sln in graph.nodes_by_op("SkipLayerNormalization", "com.microsoft"):
        assert graph.producer(sln.inputs[0]).op_type == "MatMul" and len(sln.inputs) == 5
        assert [bool(o) for o in sln.outputs] == [True, False, False, True]
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_widths_the_bias_add_kernel_lacks_keep_their_adds_and_run_on_ort_cpu():
    """64 channels: BiasAdd refused with the reason (ORT's CUDA kernel takes 320, 640, 1280); the
    SkipLayerNormalization graph runs on ORT CPU's own kernel, equal to the original."""
    model = transformer_block(C=64)
    graph, result = _compile(model)
    assert result.stats["SkipLayerNorm"] == "1/2" and result.stats["BiasAdd"] == "0/1"
    assert "64 channels: ORT's CUDA BiasAdd takes 320, 640, 1280 only" in _reasons(result, "BiasAdd")[0]
    assert not graph.nodes_by_op("BiasAdd", "com.microsoft")
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_ort(onnx_io.to_proto(graph), feeds))


def _residual_ln(x_shape, skip_shape, *, mean_output=False) -> onnx.ModelProto:
    """LayerNormalization(MatMul(x) + bias + r) with r of skip_shape; `mean_output`: its Mean is a graph output."""
    C = x_shape[-1]
    nodes = [mk("MatMul", ["x", "w"], ["mm"]), mk("Add", ["mm", "b"], ["p"]), mk("Add", ["p", "r"], ["s"]),
             mk("LayerNormalization", ["s", "g", "beta"], ["y", "mean"] if mean_output else ["y"], axis=-1),
             mk("Add", ["y", "s"], ["out"])]
    outputs = [V("out", T.FLOAT, None)] + ([V("mean", T.FLOAT, None)] if mean_output else [])
    inits = [init("w", rand(C, C, seed=1) * 0.1), init("b", rand(C, seed=2)), init("g", rand(C, seed=3)),
             init("beta", rand(C, seed=4))]
    return make_model(nodes, [V("x", T.FLOAT, x_shape), V("r", T.FLOAT, skip_shape)], outputs, inits, opset=17)


@pytest.mark.parametrize("x_shape,skip_shape,mean_output,sln,bias_add,reason", [
    ((2, 6, 320), (2, 6, 320), False, "1/1", None, None),
    ((2, 6, 320), (2, 6, 320), True, "0/1", "1/1", "Mean/InvStdDev outputs are read"),
    ((2, 6, 320), (2, 1, 320), False, "0/1", "0/1", "1 term(s) of the input's shape [2, 6, 320] and broadcast term(s) "
                                                    "[2, 1, 320] and a per-channel constant"),
    ((2, 3, 4, 320), (2, 3, 4, 320), False, "0/1", "0/1", "4-D input: the kernel takes 2-D or 3-D inputs")])
def test_norms_the_kernel_cannot_take_are_left_with_the_reason(x_shape, skip_shape, mean_output, sln, bias_add, reason):
    model = _residual_ln(x_shape, skip_shape, mean_output=mean_output)
    graph, result = _compile(model)
    assert result.stats["SkipLayerNorm"] == sln, result.details
    if reason:
        assert reason in _reasons(result, "SkipLayerNorm")[0]
    if bias_add is not None:  # the residual Add left: a BiasAdd where the kernel takes it
        assert result.stats["BiasAdd"] == bias_add
        fused = bool(graph.nodes_by_op("BiasAdd", "com.microsoft"))
        assert fused == (bias_add == "1/1")
        if not fused:
            assert ("skip does not broadcast" if skip_shape != x_shape else "4-D") in _reasons(result, "BiasAdd")[0]
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))


def test_only_targets_with_the_kernels_get_them():
    """ORT CPU: SkipLayerNormalization measured slower (force=true fuses it), no BiasAdd kernel; no target
    and TVM: neither op."""
    model = transformer_block()
    graph, result = _compile(model, "ort")
    assert "skipped" in result.stats["SkipLayerNorm"] and "no com.microsoft BiasAdd" in result.stats["BiasAdd"]
    assert not result.modified and "SkipLayerNormalization" not in graph.op_histogram()
    graph, result = _compile(model, "ort", "fuse-skip-bias{force=true},dce")
    assert result.stats["SkipLayerNorm"] == "1/2" and "skipped" in result.stats["BiasAdd"]
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_ort(onnx_io.to_proto(graph), feeds))  # ORT CPU runs what it got
    graph, result = _compile(model, "tvm-llvm")
    assert "does not accept" in result.stats["SkipLayerNorm"] and not result.modified


def test_new_ops_are_typed_for_the_fp16_kernels():
    """SkipLayerNormalization's T is every input's and the sum's type (gamma, beta, bias too), BiasAdd's its
    three inputs' and output's: all fp16 after the precision passes, and the result close to fp32."""
    model = transformer_block()
    graph, _ = _compile(model, "ort-cuda-fp16",
                        "fuse-skip-bias,dce,tag-precision{dtype=fp16,calibrate=false},materialize-precision")
    nodes = graph.nodes_by_op("SkipLayerNormalization", "com.microsoft") + graph.nodes_by_op("BiasAdd", "com.microsoft")
    assert len(nodes) == 2
    for node in nodes:
        assert {graph.type_of(t).dtype for t in node.inputs if t} == {T.FLOAT16}, node.op_type
        assert {graph.type_of(t).dtype for t in node.outputs if t} == {T.FLOAT16}, node.op_type
    feeds = _feeds(model)
    assert_close(run_ort(model, feeds), run_reference(graph, feeds), rel=2e-2, cos=0.999)


def test_symbolic_dims_that_match_by_name_fuse():
    """A dynamic batch: input, skip and sum share the exporter's symbol, so the kernel's same-shape rule holds."""
    model = transformer_block()
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    graph, result = _compile(model)
    assert result.stats["SkipLayerNorm"] == "1/2" and result.stats["BiasAdd"] == "1/1"
    feeds = _feeds(transformer_block())
    assert_close(run_ort(model, feeds), run_reference(graph, feeds))

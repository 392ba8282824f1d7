"""Small models for the explain/diff tests: shape bookkeeping the way exporters write it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model
from vidcc import plugins
from vidcc.hookspecs import hookimpl
from vidcc.pass_manager import Pass, PassResult
from vidcc.target import Target

# the nodes onnxslim folds away in the static model (all of the Reshape target's computation)
BOOKKEEPING = ["shape", "gather_n", "gather_c", "unsq_n", "unsq_c", "concat_shape",
               "shape2", "gather_hw", "div_heads", "unsq_heads", "concat_heads"]


def bookkeeping_model(batch="N"):
    """x -> Conv -> Reshape(computed [n, c, -1]) -> MatMul -> Reshape(computed [n, heads, c/heads, -1]) -> y.
    With batch="N" the batch size stays dynamic, so only the channel part of the bookkeeping folds."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array(1, np.int64), "i1"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array([2], np.int64), "heads"),
             numpy_helper.from_array(np.array(2, np.int64), "heads_s"),
             numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "proj_w")]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["c_shape"], name="shape"),
        helper.make_node("Gather", ["c_shape", "i0"], ["n"], name="gather_n", axis=0),
        helper.make_node("Gather", ["c_shape", "i1"], ["ch"], name="gather_c", axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq_n"),
        helper.make_node("Unsqueeze", ["ch", "ax0"], ["c1"], name="unsq_c"),
        helper.make_node("Concat", ["n1", "c1", "minus1"], ["target_shape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["c", "target_shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "proj_w"], ["proj"], name="proj"),
        helper.make_node("Shape", ["proj"], ["p_shape"], name="shape2"),
        helper.make_node("Gather", ["p_shape", "i1"], ["hw"], name="gather_hw", axis=0),
        helper.make_node("Div", ["hw", "heads_s"], ["per_head"], name="div_heads"),
        helper.make_node("Unsqueeze", ["per_head", "ax0"], ["per_head1"], name="unsq_heads"),
        helper.make_node("Concat", ["n1", "heads", "per_head1", "minus1"], ["split_shape"], name="concat_heads", axis=0),
        helper.make_node("Reshape", ["proj", "split_shape"], ["y"], name="split_heads"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [batch, 4, 8, 8])],
                      [helper.make_tensor_value_info("y", T.FLOAT, [batch, 2, 4, 16])], inits, opset=17)



def layernorm_silu_model(channels=16):
    """A decomposed LayerNorm (as the TorchScript exporter writes it), a linear layer and x*sigmoid(x):
    what fuse-layernorm and fuse-silu rewrite, and a 3-D MatMul fuse-gemm refuses."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal((channels, channels)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b1")]
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="ln.mean"),
        helper.make_node("Sub", ["x", "mean"], ["d"], name="ln.sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="ln.pow"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="ln.var"),
        helper.make_node("Add", ["var", "eps"], ["vareps"], name="ln.addeps"),
        helper.make_node("Sqrt", ["vareps"], ["std"], name="ln.sqrt"),
        helper.make_node("Div", ["d", "std"], ["normed"], name="ln.div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="ln.mul"),
        helper.make_node("Add", ["scaled", "beta"], ["ln_out"], name="ln.add"),
        helper.make_node("MatMul", ["ln_out", "w1"], ["h"], name="ff.matmul"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="ff.bias"),
        helper.make_node("Sigmoid", ["hb"], ["sg"], name="act.sigmoid"),
        helper.make_node("Mul", ["hb", "sg"], ["y"], name="act.mul"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2, 8, channels])],
                      [helper.make_tensor_value_info("y", T.FLOAT, [2, 8, channels])], inits, opset=18)


# ---- a test plugin: a pass that fuses, refuses, tags precision and emits odd details; a target --------

@dataclass(frozen=True)
class FakeFuse(Pass):
    """Replace Add(MatMul) by one Gemm-like 'FusedMatMulAdd' node; tag Relu fp16; emit every kind of detail."""

    name = "fake-fuse"

    def run(self, graph, ctx):
        (mm,), (add,), (relu,) = graph.nodes_by_op("MatMul"), graph.nodes_by_op("Add"), graph.nodes_by_op("Relu")
        fused = graph.add_node("Gemm", [mm.inputs[0], mm.inputs[1], add.inputs[1]], 1, name="fused_linear")
        graph.replace_all_uses(add.outputs[0], fused.outputs[0])
        relu.precision = "fp16"
        details = [
            {"kind": "fused", "pattern": "Linear", "node": "matmul", "nodes": ["matmul", "bias"]},
            {"kind": "refused", "pattern": "Attention", "node": "relu", "reason": "mask input is not constant"},
            {"kind": "pruned", "layer": "conv_in", "kept": np.int64(48), "total": 64, "channels": {3, 1, 2}},
            {"kind": "routed", "node": "router", "expert": 1, "value": np.float32(0.5)},
            {"kind": "routed", "router": "r0", "op": "If", "value": 500, "decision": "expert high"},  # as moe emits
            {"kind": "pruned", "node": "conv1", "op": "Conv", "channels": [64, 48], "params": [100, 80]},
            {"kind": "precision", "node": "relu", "from": None, "to": "fp16", "reason": "not a reduction"},
            {"kind": "vendor-thing", "weight": np.arange(3), "where": relu},
            "a bare string detail",
        ]
        return PassResult(True, {"Linear": "1/1"}, details)


@dataclass(frozen=True)
class Boom(Pass):
    """Always fails."""

    name = "boom"

    def run(self, graph, ctx):
        graph.remove_node(graph.nodes[0])
        raise RuntimeError("kaput")


class _Plugin:
    @hookimpl
    def vidcc_register_passes(self, register):
        register(FakeFuse)
        register(Boom)

    @hookimpl
    def vidcc_register_targets(self, register):
        register(Target("fake-target", "for tests", default_pipeline="remove-identity,dce"))


@pytest.fixture
def explain_plugin():
    plugins.reset(extra=[("explain-test", _Plugin())])
    yield
    plugins.reset()

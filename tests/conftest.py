"""Shared fixtures: small hand-written ONNX models and a clean plugin registry per test."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from vidcc import plugins


@pytest.fixture(scope="session", autouse=True)
def _shared_zoo_cache(request, tmp_path_factory):
    """Every test shares one zoo export cache (pytest's cache dir, persistent across runs), also the
    tests that point VIDCC_CACHE_DIR at a fresh directory for their artifacts."""
    if not os.environ.get("VIDCC_ZOO_CACHE_DIR"):
        cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
        path = cache.mkdir("vidcc-zoo") if cache is not None else tmp_path_factory.mktemp("vidcc-zoo")
        os.environ["VIDCC_ZOO_CACHE_DIR"] = str(path)
    yield


@pytest.fixture(autouse=True)
def _fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, **graph_kw):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers), **graph_kw)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


@pytest.fixture
def mlp_model():
    """x[N,4] -> MatMul -> Add(bias) -> Relu -> Identity -> y, with a dead branch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "B"], ["biased"], name="bias"),
        helper.make_node("Relu", ["biased"], ["act"], name="relu"),
        helper.make_node("Identity", ["act"], ["y"], name="ident"),
        helper.make_node("Sigmoid", ["mm"], ["dead"], name="dead_sigmoid"),
    ]
    m = make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", T.FLOAT, ["N", 8])], [w, b])
    m.doc_string = "mlp"
    m.metadata_props.add(key="source", value="tests")
    return m


@pytest.fixture
def mlp_path(tmp_path, mlp_model):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model, path)
    return path


def run_ort(model_or_path, feeds):
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

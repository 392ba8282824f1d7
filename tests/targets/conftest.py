"""Small hand-made models the target tests build quickly, and a private cache per test."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCC_CACHE_DIR", str(tmp_path / "cache"))


def cnn_model(dynamic_batch: bool = False) -> onnx.ModelProto:
    """x[B,4,8,8] -> Conv 3x3 -> SiLU -> Reshape/Transpose -> MatMul -> LayerNorm-ish -> Softmax -> y[B,64,16]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in {
        "w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(8).astype(np.float32),
        "shape": np.array([0, 8, 64], np.int64),
        "m": rng.standard_normal((8, 16)).astype(np.float32) * 0.5,
        "mb": rng.standard_normal(16).astype(np.float32),
    }.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["a"]),
        helper.make_node("Identity", ["a"], ["a2"]),
        helper.make_node("Reshape", ["a2", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "mb"], ["h"]),
        helper.make_node("Softmax", ["h"], ["y"], axis=-1),
    ]
    b = "B" if dynamic_batch else 1
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [b, 4, 8, 8])],
                      [helper.make_tensor_value_info("y", T.FLOAT, [b, 64, 16])], inits)


@pytest.fixture
def cnn_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn_model(), path)
    np.savez(tmp_path / "cnn.inputs.npz", x=np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32))
    return path


@pytest.fixture
def cnn_dynamic_path(tmp_path):
    path = tmp_path / "cnn_dyn.onnx"
    onnx.save(cnn_model(dynamic_batch=True), path)
    np.savez(tmp_path / "cnn_dyn.inputs.npz", x=np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32))
    return path


def zoo_export():
    """vidcc.zoo's export, or None while the zoo has not landed."""
    try:
        from vidcc import zoo
    except ImportError:
        return None
    return getattr(zoo, "export", None)

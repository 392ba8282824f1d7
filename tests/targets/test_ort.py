"""The ONNX Runtime targets."""

import numpy as np
import pytest

from tests.targets.conftest import zoo_export
from vidcc import plugins
from vidcc.compile import compile_model
from vidcc.errors import TargetError


def test_ort_compiles_verifies_and_reproduces(cnn_path):
    result = compile_model(str(cnn_path), "ort")
    assert result.verdict.passed and result.verdict.gate.kind == "exact"
    assert result.metrics["y"].max_rel < 1e-5
    runner = result.artifact.runner()
    outputs = runner.run(result.artifact.sample_inputs())
    assert np.array_equal(outputs["y"], result.artifact.verified_outputs()["y"])


def test_ort_accepts_only_what_its_cpu_ep_runs():
    ort = plugins.registry().targets["ort"].obj
    assert ort.supports("GroupNormalization") and ort.supports("Attention") and ort.supports("RMSNormalization")
    assert ort.supports("MultiHeadAttention", "com.microsoft") and ort.supports("SkipLayerNormalization", "com.microsoft")
    assert not ort.supports("GroupNorm", "com.microsoft") and not ort.supports("BiasSplitGelu", "com.microsoft")
    cuda = plugins.registry().targets["ort-cuda"].obj
    assert cuda.supports("GroupNorm", "com.microsoft")


def test_cuda_targets_say_why_they_are_unavailable(cnn_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    for name in ("ort-cuda", "ort-cuda-fp16"):
        a = plugins.registry().targets[name].obj.available()
        assert not a and "CUDAExecutionProvider" in a.reason and "onnxruntime-gpu" in a.hint
    with pytest.raises(TargetError, match="not available here"):
        compile_model(str(cnn_path), "ort-cuda")


def test_dynamic_dims_run_at_any_size(cnn_dynamic_path):
    result = compile_model(str(cnn_dynamic_path), "ort")
    assert result.verdict.passed
    out = result.artifact.runner().run({"x": np.zeros((3, 4, 8, 8), np.float32)})
    assert out["y"].shape == (3, 64, 16)


@pytest.mark.slow
def test_ort_on_tiny_svd():
    if zoo_export() is None:
        pytest.skip("vidcc.zoo has not landed yet")
    result = compile_model("svd-unet:tiny", "ort")
    assert result.verdict.passed

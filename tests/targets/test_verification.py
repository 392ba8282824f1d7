"""Verification metrics, gates and feed checks."""

import math

import numpy as np
import pytest

from vidcc import verification as V
from vidcc.errors import VidccError


def test_identical_outputs_are_exact():
    a = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    m = V.metrics("y", a, a)
    assert m.max_abs == 0 and m.max_rel == 0 and m.cosine == pytest.approx(1.0) and math.isinf(m.psnr_db)
    assert V.judge({"y": m}, "exact").passed


def test_relative_error_is_scaled_by_the_reference_range():
    ref = np.array([0.0, 1e-9, 10.0], np.float32)
    out = ref + np.array([0.0, 1e-6, 0.0], np.float32)
    m = V.metrics("y", out, ref)
    assert m.max_abs == pytest.approx(1e-6, rel=1e-3)
    assert m.max_rel == pytest.approx(1e-7, rel=1e-3)  # |diff| / max|ref|: a near-zero element cannot explode it
    assert m.max_rel_elem == pytest.approx(1e-6 / (1e-9 + 1e-2), rel=1e-2)  # eps = 1e-3 * max|ref|
    assert V.judge({"y": m}, "exact").passed


def test_psnr_and_cosine_of_a_known_error():
    ref = np.linspace(-1, 1, 1000)
    out = ref + 0.01
    m = V.metrics("y", out, ref)
    assert m.psnr_db == pytest.approx(20 * math.log10(2 / 0.01), rel=1e-6)
    assert 0.999 < m.cosine < 1


def test_gates_by_kind():
    ref = np.random.default_rng(0).standard_normal(10000)
    noisy = ref + 0.03 * np.random.default_rng(1).standard_normal(10000)  # cosine ~ 0.9996
    m = {"y": V.metrics("y", noisy, ref)}
    assert not V.judge(m, "exact").passed
    assert V.judge(m, "fp16").passed and V.judge(m, "bf16").passed and V.judge(m, "lossy").passed
    worse = {"y": V.metrics("y", ref + 0.08 * np.random.default_rng(1).standard_normal(10000), ref)}
    assert not V.judge(worse, "fp16").passed and V.judge(worse, "bf16").passed


def test_nan_shape_and_missing_outputs_fail_every_gate():
    ref = np.ones((2, 2), np.float32)
    nan = ref.copy()
    nan[0, 0] = np.nan
    m = V.compare_outputs({"y": nan, "z": np.ones(3)}, {"y": ref, "z": np.ones(4), "w": ref})
    assert m["y"].nan == 1 and m["z"].error.startswith("shape") and m["w"].error == "output missing"
    verdict = V.judge(m, "lossy")
    assert not verdict.passed and len(verdict.failures) == 3


def test_gate_choice():
    from vidcc.pass_manager import PassRecord

    exact = PassRecord("cse", "cse", "builtin", True, 0, 1, 1)
    prune = PassRecord("prune-channels", "prune-channels{ratio=0.3}", "builtin", True, 0, 1, 1, lossy=True)
    half = PassRecord("tag-precision", "tag-precision{dtype=bf16}", "builtin", True, 0, 1, 1, lossy=True)
    assert V.gate_for("fp32", [exact]).kind == "exact"
    assert V.gate_for("fp16", [exact]).kind == "fp16"
    assert V.gate_for("fp32", [exact, prune]).kind == "lossy"
    assert V.gate_for("fp32", [prune, half]).kind == "bf16"
    assert V.gate_for("fp32", [prune], requested="exact").kind == "exact"
    with pytest.raises(VidccError):
        V.gate_for(requested="tight")


def test_random_feeds_and_feed_checks(mlp_path):
    sig = V.input_signature(mlp_path)
    assert sig == {"x": {"dtype": "float32", "shape": ["N", 4]}}
    feeds = V.random_feeds(sig, dims={"N": 3})
    assert feeds["x"].shape == (3, 4)
    V.check_feeds(feeds, sig)
    with pytest.raises(VidccError, match="missing x"):
        V.check_feeds({"q": feeds["x"]}, sig)
    with pytest.raises(VidccError, match="float64"):
        V.check_feeds({"x": feeds["x"].astype(np.float64)}, sig)
    with pytest.raises(VidccError, match=r"shape \[3, 5\]"):
        V.check_feeds({"x": np.zeros((3, 5), np.float32)}, sig)


def test_timing_helper():
    from vidcc.measure import time_fn

    calls = []
    t = time_fn(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7 and t.runs == 5 and t.min_ms <= t.median_ms <= t.p90_ms

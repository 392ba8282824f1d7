"""Property: every exact pass keeps ONNX Runtime's outputs (rel <= 1e-4) and verify() green on random
valid graphs. The budget is VIDCC_FUZZ_EXAMPLES per pass (CI default below); bench/fuzz.py runs longer."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import run_ort
from tests.robustness.graph_grammar import C, N, graphs
from vidcc import onnx_io
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline

EXAMPLES = int(os.environ.get("VIDCC_FUZZ_EXAMPLES", "25"))
EXACT = ["remove-identity", "dce", "simplify-casts", "infer-shapes", "fold-constants", "cse", "dedup-constants", "cleanup"]
FEEDS = {"x": np.random.default_rng(0).standard_normal((N, C)).astype(np.float32)}


def check_exact(model, spec: str) -> None:
    ref = run_ort(model, FEEDS)
    graph = onnx_io.from_proto(model)
    run_pipeline(graph, spec, PassContext(verify_each=True))
    verify(graph)
    got = run_ort(onnx_io.to_proto(graph), FEEDS)
    assert got.keys() == ref.keys()
    for name, want in ref.items():
        err = np.max(np.abs(got[name] - want)) / max(float(np.max(np.abs(want))), 1e-6)
        assert err <= 1e-4, f"{spec}: output {name} rel error {err}"


@pytest.mark.parametrize("spec", EXACT)
def test_exact_pass_keeps_outputs(spec):
    from vidcc import plugins

    if spec not in plugins.registry().passes and spec not in plugins.registry().pipelines:
        pytest.skip(f"pass {spec} is not registered")

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(graphs())
    def prop(model):
        check_exact(model, spec)

    prop()

"""Helpers for pass tests: ONNX text models in, op lists and ORT-checked numerics out."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from tests.conftest import run_ort
from vidcc import onnx_io
from vidcc.ir import verify
from vidcc.pass_manager import PassContext, run_pipeline
from vidcc.target import Target

MS = ("com.microsoft",)
# An ORT-like target that accepts the contrib ops ORT CPU has kernels for (measured, DESIGN §12).
ORT_CPU = Target(name="ort", accepted_ops={"*": ("",), "MultiHeadAttention": MS, "QuickGelu": MS,
                                           "Gelu": ("",) + MS, "FastGelu": MS, "SkipLayerNormalization": MS})
TVM = Target(name="tvm-llvm")  # standard ops only (and vidcc knows what TVM's importer lacks)


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ops(graph) -> list[str]:
    return [(f"{n.domain}::" if n.domain else "") + n.op_type for n in graph.toposort()]


def assert_close(want: dict, got: dict, rel: float = 1e-4, cos: float = 0.99999) -> None:
    assert got.keys() == want.keys()
    for name, ref in want.items():
        out = got[name]
        assert out.shape == ref.shape, name
        err = float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        c = float(np.dot(out.ravel().astype(np.float64), ref.ravel()) /
                  (np.linalg.norm(out.astype(np.float64)) * np.linalg.norm(ref.astype(np.float64)) + 1e-30))
        assert err <= rel, f"{name}: rel error {err}"
        assert c >= cos, f"{name}: cosine {c}"


def check(model: onnx.ModelProto, spec: str, feeds: dict, target=None, **ctx_kw):
    """Run `spec` on the model with verification after each pass, compare ORT before/after;
    returns (graph, log by pass name)."""
    ref = run_ort(model, feeds)
    graph = onnx_io.from_proto(model)
    ctx = PassContext(target=target, verify_each=True, **ctx_kw)
    run_pipeline(graph, spec, ctx)
    verify(graph)
    assert_close(ref, run_ort(onnx_io.to_proto(graph), feeds))
    return graph, {r.name: r for r in ctx.log}


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

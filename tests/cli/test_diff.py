"""`vidcc diff`: matching nodes across two files and reporting what another tool (onnxslim) changed."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.cli.explain_models import BOOKKEEPING, bookkeeping_model
from tests.conftest import run_ort
from vidcc.cli import main
from vidcc.report_schema import problems

onnxslim = pytest.importorskip("onnxslim")


def diff_json(capsys, a, b):
    code = main(["diff", str(a), str(b), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert problems(report) == [], problems(report)
    return report


def save(model, path):
    onnx.save(model, path)
    return path


def histogram(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("batch", [2, "N"])
def test_onnxslim_removed_shape_bookkeeping(capsys, tmp_path, batch):
    model = bookkeeping_model(batch)
    slim = onnxslim.slim(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    assert np.allclose(run_ort(model, feeds)["y"], run_ort(slim, feeds)["y"])  # the tool kept the meaning
    r = diff_json(capsys, save(model, tmp_path / "a.onnx"), save(slim, tmp_path / "b.onnx"))
    ch = r["changes"]
    assert r["kind"] == "diff" and r["match"]["unmatched_b"] == 0
    assert [n["name"] for n in ch["removed"]] == BOOKKEEPING
    assert ch["added"] == []
    # both Reshapes now read a constant shape instead of the computed one; nothing else changed
    assert sorted((n["name"], tuple(n["what"])) for n in ch["rewritten"]) == \
        [("reshape", ("inputs",)), ("split_heads", ("inputs",))]
    expected = histogram(slim)
    expected.subtract(histogram(model))
    assert ch["ops_delta"] == {op: d for op, d in sorted(expected.items()) if d}
    assert ch["cost"]["params"] == 0
    assert r["a"]["summary"]["nodes"] == len(model.graph.node) and r["b"]["summary"]["nodes"] == len(slim.graph.node)


def test_structure_matching_without_names(capsys, tmp_path):
    """Names stripped on both sides and every intermediate tensor renamed in B: matching by structure
    and by neighbourhood still finds the same answer."""
    model, slim = bookkeeping_model(2), onnxslim.slim(bookkeeping_model(2))
    for m in (model, slim):
        for n in m.graph.node:
            n.name = ""
    outputs = {o.name for o in slim.graph.output}
    renamed = {o: o + "_renamed" for n in slim.graph.node for o in n.output if o not in outputs}
    for n in slim.graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]
    r = diff_json(capsys, save(model, tmp_path / "a.onnx"), save(slim, tmp_path / "b.onnx"))
    ch = r["changes"]
    assert r["match"]["name"] == 0 and r["match"]["unmatched_b"] == 0
    assert Counter(n["op"] for n in ch["removed"]) == Counter(
        {"Shape": 2, "Gather": 3, "Unsqueeze": 3, "Concat": 2, "Div": 1})
    assert ch["added"] == [] and sorted(n["op"] for n in ch["rewritten"]) == ["Reshape", "Reshape"]


def test_identical_files_and_small_edits(capsys, tmp_path):
    model = bookkeeping_model(2)
    a = save(model, tmp_path / "a.onnx")
    r = diff_json(capsys, a, a)
    assert r["changes"]["counts"] == {"added": 0, "removed": 0, "rewritten": 0, "precision": 0, "types": 0,
                                      "nodes_before": 15, "nodes_after": 15}
    edited = bookkeeping_model(2)
    next(n for n in edited.graph.node if n.name == "concat_heads").attribute[0].i = -1  # axis 0 -> -1
    heads = next(t for t in edited.graph.initializer if t.name == "heads")
    heads.CopyFrom(numpy_helper.from_array(np.array([4], np.int64), "heads"))  # a small constant's value
    r = diff_json(capsys, a, save(edited, tmp_path / "b.onnx"))
    assert [(n["name"], n["what"], n.get("attrs")) for n in r["changes"]["rewritten"]] == \
        [("concat_heads", ["attrs", "inputs"], ["axis"])]


def test_terminal_and_errors(capsys, tmp_path):
    model = bookkeeping_model(2)
    a, b = save(model, tmp_path / "a.onnx"), save(onnxslim.slim(model), tmp_path / "b.onnx")
    assert main(["diff", str(a), str(b)]) == 0
    out, _ = capsys.readouterr()
    assert "removed (11)" in out and "gather_hw (Gather)" in out and "reshape (Reshape: inputs)" in out
    assert main(["diff", str(a), str(tmp_path / "missing.onnx")]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "not found" in err


def _zoo_model(tmp_path):
    """A zoo model exported to ONNX, when the zoo has landed and can export here."""
    from vidcc import zoo

    if not hasattr(zoo, "export"):
        pytest.skip("vidcc.zoo has no export() yet")
    try:
        export = zoo.export("svd-unet:tiny")
    except Exception as exc:  # torch/diffusers missing: the zoo extra is optional
        pytest.skip(f"zoo export unavailable: {exc}")
    return export.model_path


@pytest.mark.slow
def test_zoo_model_against_onnxslim(capsys, tmp_path):
    src = _zoo_model(tmp_path)
    model = onnx.load(src)
    slim = onnxslim.slim(onnx.load(src))
    b = tmp_path / "slim.onnx"
    onnx.save(slim, b, save_as_external_data=slim.ByteSize() > 1_500_000_000)
    r = diff_json(capsys, src, b)
    ch = r["changes"]
    expected = histogram(slim)
    expected.subtract(histogram(model))
    assert ch["ops_delta"] == {op: d for op, d in sorted(expected.items()) if d}
    assert len(ch["removed"]) - len(ch["added"]) == len(model.graph.node) - len(slim.graph.node)
    names_a = Counter(n.name for n in model.graph.node)
    names_b = {n.name for n in slim.graph.node}
    gone = {n for n, k in names_a.items() if n and k == 1 and n not in names_b}
    renamed = {n["before"]["name"] for n in ch["rewritten"] if "name" in n["what"]}
    assert gone <= {n["name"] for n in ch["removed"]} | renamed
    # a node reported removed really is gone: no node of B of its op produces any of its outputs
    produced_b = {(o, n.op_type) for n in slim.graph.node for o in n.output}
    a_nodes = {n.name: n for n in model.graph.node}
    for n in ch["removed"]:
        if n["name"] in a_nodes:
            assert not any((o, n["op"]) in produced_b for o in a_nodes[n["name"]].output), n
    shape_ops = [n for n in ch["removed"] if n["op"] in ("Shape", "Gather", "Unsqueeze", "Concat")]
    assert shape_ops, "onnxslim folds shape bookkeeping in an exported UNet"

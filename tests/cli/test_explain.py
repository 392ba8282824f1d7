"""`vidcc explain`: per-pass diffs, the vidcc.explain/1 schema, terminal output, details of any kind."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.cli.explain_models import explain_plugin, layernorm_silu_model  # noqa: F401  (a fixture)
from vidcc.cli import main
from vidcc.report_schema import load_schema, problems


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def explain_json(capsys, *args):
    code, out, err = cli(capsys, "explain", *args, "--json")
    report = json.loads(out)
    assert problems(report) == [], problems(report)
    return code, report


# ---- tests ------------------------------------------------------------------------------------------

def test_schema_file_is_a_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "vidcc.explain/1"


def test_remove_identity_dce_lists_removed_nodes(capsys, mlp_path):
    code, r = explain_json(capsys, mlp_path, "-p", "remove-identity,dce")
    assert code == 0
    assert r["schema"] == "vidcc.explain/1" and r["kind"] == "explain" and r["pipeline"] == "remove-identity,dce"
    ident, dce = r["passes"]
    assert (ident["name"], dce["name"]) == ("remove-identity", "dce")
    assert [n["name"] for n in ident["changes"]["removed"]] == ["ident"]
    assert [(n["name"], n["what"]) for n in ident["changes"]["rewritten"]] == [("relu", ["outputs"])]
    assert ident["changes"]["ops_delta"] == {"Identity": -1}
    assert [n["name"] for n in dce["changes"]["removed"]] == ["dead_sigmoid"]
    assert dce["changes"]["added"] == [] and dce["changes"]["rewritten"] == []
    s = r["summary"]
    assert (s["nodes_before"], s["nodes_after"], s["removed"], s["rewritten"]) == (5, 3, 2, 1)
    assert s["ops_delta"] == {"Identity": -1, "Sigmoid": -1}
    assert r["before"]["nodes"] == 5 and r["after"]["nodes"] == 3
    # regions: the removed Identity is drawn with its neighbours
    region = ident["changes"]["regions"][0]
    assert {n["name"]: n["status"] for n in region["before"]["nodes"]} == \
        {"relu": "rewritten", "ident": "removed", "bias": "context"}


def test_terminal_output_and_focus(capsys, mlp_path):
    code, out, _ = cli(capsys, "explain", mlp_path, "-p", "remove-identity,dce")
    assert code == 0
    assert "remove-identity" in out and "ident (Identity)" in out and "dead_sigmoid (Sigmoid)" in out
    code, out, _ = cli(capsys, "explain", mlp_path, "-p", "remove-identity,dce", "--pass", "dce")
    assert code == 0
    assert "dead_sigmoid" in out and "ident (Identity)" not in out


def test_macs_counted_at_sample_inputs(capsys, mlp_path):
    np.savez(mlp_path.with_suffix(".inputs.npz"), x=np.zeros((3, 4), np.float32))
    _, r = explain_json(capsys, mlp_path, "-p", "dce")
    assert r["before"]["macs"] == 3 * 4 * 8 and r["before"]["macs_at"] == {"x": [3, 4]}


def test_details_of_every_kind_fusion_and_precision(capsys, mlp_path, explain_plugin, tmp_path):
    code, r = explain_json(capsys, mlp_path, "-p", "fake-fuse,dce")
    assert code == 0
    fuse, dce = r["passes"]
    assert fuse["events"] == {"fused": 1, "other": 1, "precision": 1, "pruned": 2, "refused": 1,
                              "routed": 2, "vendor-thing": 1}
    assert fuse["stats"] == {"Linear": "1/1"}
    assert [n["name"] for n in fuse["changes"]["added"]] == ["fused_linear"]
    assert fuse["changes"]["precision"] == [{"id": 2, "name": "relu", "op": "Relu", "precision": "fp16",
                                             "from": None, "to": "fp16"}]
    assert "inputs" in next(n for n in fuse["changes"]["rewritten"] if n["name"] == "relu")["what"]
    assert sorted(n["name"] for n in dce["changes"]["removed"]) == ["bias", "dead_sigmoid", "matmul"]
    assert r["summary"]["events"]["fused"] == 1 and r["summary"]["precision_changes"] == 1
    pruned = next(d for d in fuse["details"] if isinstance(d, dict) and d["kind"] == "pruned" and "kept" in d)
    assert pruned["kept"] == 48 and pruned["channels"] == [1, 2, 3]  # numpy and sets made JSON
    # one region holds the fusion: MatMul+Add before, the fused node after
    regions = fuse["changes"]["regions"]
    before = {n["name"] for reg in regions for n in reg["before"]["nodes"]}
    after = {n["name"] for reg in regions for n in reg["after"]["nodes"]}
    assert "fused_linear" in after and "relu" in before

    code, out, _ = cli(capsys, "explain", mlp_path, "-p", "fake-fuse,dce", "--pass", "fake-fuse")
    for text in ("Linear at matmul", "Attention at relu: mask input is not constant", "conv_in: 48/64 channels kept",
                 "router [0.5] -> 1", "r0 [500] -> expert high", "conv1: channels 64 -> 48", "relu: None -> fp16", "vendor-thing", "a bare string detail", "fused_linear (Gemm)"):
        assert text in out, text


def test_builtin_fusions_report_fused_counts(capsys, tmp_path):
    """The fusion passes' own events come through: fused counts per fusion pass, refusals with reasons."""
    from vidcc import plugins

    if "fuse" not in plugins.registry().pipelines:
        pytest.skip("the fuse pipeline has not landed")
    path = tmp_path / "ln.onnx"
    onnx.save(layernorm_silu_model(), path)
    code, r = explain_json(capsys, path, "-p", "cleanup,fuse")
    assert code == 0
    by_name = {p["name"]: p for p in r["passes"]}
    ln, silu = by_name["fuse-layernorm"], by_name["fuse-silu"]
    assert ln["events"].get("fused") == 1 and silu["events"].get("fused") == 1
    assert sorted(n["name"] for n in ln["changes"]["removed"]) == sorted(
        ["ln.mean", "ln.sub", "ln.pow", "ln.var", "ln.addeps", "ln.sqrt", "ln.div", "ln.mul", "ln.add"])
    assert [n["op"] for n in ln["changes"]["added"]] == ["LayerNormalization"]
    assert ln["changes"]["ops_delta"]["LayerNormalization"] == 1
    assert r["summary"]["events"]["fused"] >= 2
    refused = [d for p in r["passes"] for d in p["details"] if isinstance(d, dict) and d.get("kind") == "refused"]
    assert all(d.get("reason") for d in refused)  # every refusal says why
    code, out, _ = cli(capsys, "explain", path, "-p", "cleanup,fuse", "--pass", "fuse-layernorm")
    assert "fused (1)" in out and "LayerNorm at" in out


def test_target_default_pipeline(capsys, mlp_path, explain_plugin):
    code, r = explain_json(capsys, mlp_path, "--target", "fake-target")
    assert code == 0
    assert r["target"] == "fake-target" and [p["name"] for p in r["passes"]] == ["remove-identity", "dce"]
    code, r = explain_json(capsys, mlp_path, "--target", "fake-target", "-p", "dce")
    assert r["pipeline"] == "remove-identity,dce,dce"


def test_failing_pass_is_reported_and_rolled_back(capsys, mlp_path, explain_plugin):
    code, r = explain_json(capsys, mlp_path, "-p", "dce,boom,remove-identity")
    assert code == 1
    assert [p["name"] for p in r["passes"]] == ["dce", "boom"]
    assert r["passes"][1]["changes"] is None and "kaput" in r["passes"][1]["error"]
    assert "kaput" in r["error"] and r["summary"]["failed"] == 1
    assert r["after"]["nodes"] == 4  # dce ran, boom was rolled back
    code, r = explain_json(capsys, mlp_path, "-p", "dce,boom,remove-identity", "--keep-going")
    assert code == 0 and [p["name"] for p in r["passes"]] == ["dce", "boom", "remove-identity"]


@pytest.mark.parametrize("args, message", [
    ([], "give --target T"),
    (["-p", "dce", "--pass", "cse"], "--pass cse: not in the pipeline"),
    (["--target", "nope"], "unknown target 'nope'"),
    (["-p", "no-such-pass"], "unknown pass 'no-such-pass'"),
])
def test_errors_are_one_line(capsys, mlp_path, args, message):
    code, out, err = cli(capsys, "explain", mlp_path, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_html_is_written_atomically(capsys, mlp_path, tmp_path):
    code, _, err = cli(capsys, "explain", mlp_path, "-p", "dce", "--html", tmp_path / "missing" / "r.html")
    assert code == 2 and "does not exist" in err
    page = tmp_path / "r.html"
    code, out, _ = cli(capsys, "explain", mlp_path, "-p", "remove-identity,dce", "--html", page)
    assert code == 0 and f"wrote {page}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "r.html"]  # no temporary left behind
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and 'id="node-table"' in html


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(schema="vidcc.explain/2"),
    lambda r: r.pop("passes"),
    lambda r: r["passes"][0]["changes"]["counts"].pop("removed"),
    lambda r: r["passes"][0]["changes"]["rewritten"][0].update(what=["colour"]),
    lambda r: r["summary"].update(nodes_after=-1),
    lambda r: r["passes"][0]["changes"]["ops_delta"].update(Relu=0),
])
def test_schema_rejects_broken_reports(capsys, mlp_path, mutate):
    _, r = explain_json(capsys, mlp_path, "-p", "remove-identity,dce")
    mutate(r)
    assert problems(r)

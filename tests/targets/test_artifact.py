"""The content-hashed artifact cache: hits, misses, corruption, concurrency, export."""

import json
import multiprocessing
import os

import numpy as np
import onnx
import pytest

from vidcc import artifact as art
from vidcc.compile import compile_model


def test_same_inputs_build_once_any_change_rebuilds(cnn_path):
    first = compile_model(str(cnn_path), "ort")
    again = compile_model(str(cnn_path), "ort")
    assert not first.cached and again.cached and again.artifact.path == first.artifact.path
    assert compile_model(str(cnn_path), "ort", pipeline="cse").artifact.key != first.artifact.key
    feeds = {"x": np.zeros((1, 4, 8, 8), np.float32)}
    assert compile_model(str(cnn_path), "ort", inputs=feeds).artifact.key != first.artifact.key
    model = onnx.load(cnn_path)
    model.graph.node[1].op_type = "Relu"  # a different graph
    onnx.save(model, cnn_path)
    assert compile_model(str(cnn_path), "ort").artifact.key != first.artifact.key


def test_target_options_and_tool_versions_are_in_the_key(cnn_path, monkeypatch):
    from vidcc.compile import get_target

    key = compile_model(str(cnn_path), "ort").artifact.key
    target = get_target("ort")
    monkeypatch.setattr(target, "options", {"intra_op_num_threads": 1})
    assert compile_model(str(cnn_path), "ort").artifact.key != key
    monkeypatch.setattr(target, "options", {})
    monkeypatch.setattr(type(target), "tool_versions", lambda self: {"onnxruntime": "0.0-other"})
    assert compile_model(str(cnn_path), "ort").artifact.key != key


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_corrupt_entry_is_detected_and_rebuilt(cnn_path, damage):
    first = compile_model(str(cnn_path), "ort")
    model = first.artifact.path / "model.onnx"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(model.read_bytes())
        data[-5] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "delete":
        model.unlink()
    else:
        (first.artifact.path / "manifest.json").write_text("{not json")
    with pytest.raises(art.ArtifactError):
        art.Artifact.open(first.artifact.path)
    again = compile_model(str(cnn_path), "ort")
    assert not again.cached and again.artifact.key == first.artifact.key
    art.Artifact.open(again.artifact.path)  # valid again


def _compile_in_child(path, queue):
    result = compile_model(path, "ort")
    queue.put((result.cached, str(result.artifact.path)))


def test_concurrent_compiles_of_the_same_thing_share_one_entry(cnn_path):
    # spawn, not fork: a fork of this process (ORT, TVM and torch threads by now) can hang the child on a
    # lock one of those threads held (seen once in CI: both children silent, queue.get timed out)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_compile_in_child, args=(str(cnn_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    results = [queue.get(timeout=5) for _ in procs]
    assert sorted(c for c, _ in results) == [False, True]  # one built, the other waited and reused it
    assert len({p for _, p in results}) == 1
    art.Artifact.open(results[0][1])
    leftovers = [p.name for p in art.Cache().root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []


def test_export_is_a_complete_artifact_and_refuses_foreign_dirs(cnn_path, tmp_path):
    out = tmp_path / "out"
    result = compile_model(str(cnn_path), "ort", output_dir=out)
    exported = art.Artifact.open(out)
    assert exported.key == result.artifact.key
    assert json.loads((out / "manifest.json").read_text())["files"].keys() >= {"model.onnx", "inputs.npz", "outputs.npz"}
    compile_model(str(cnn_path), "ort", output_dir=out)  # replacing an artifact is fine
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(art.ArtifactError, match="refusing"):
        compile_model(str(cnn_path), "ort", output_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_manifest_records_what_the_build_depended_on(cnn_path):
    m = compile_model(str(cnn_path), "ort").manifest
    assert m["schema"] == art.SCHEMA and m["target"]["name"] == "ort"
    assert m["bindings"] == {}
    assert {"vidcc", "onnx", "onnxruntime"} <= set(m["tool_versions"])
    assert m["pipeline"]["passes"][0] == "remove-identity"
    assert all(set(f) == {"sha256", "bytes"} for f in m["files"].values())
    assert m["verification"]["inputs"]["from"] == "model"
    assert m["verification"]["verdict"]["passed"]
    assert m["pass_log"] and {"name", "spec", "modified", "nodes_before", "nodes_after"} <= set(m["pass_log"][0])
    assert m["graph"]["nodes_before"] == 9 and m["graph"]["nodes_after"] < 9

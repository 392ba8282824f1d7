"""`vidcc compile` and `vidcc run` from the command line."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.targets.conftest import cnn_model  # noqa: F401  (fixtures below use the same models)
from vidcc.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def cnn(tmp_path):
    import onnx

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn_model(), path)
    np.savez(tmp_path / "cnn.inputs.npz", x=np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32))
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_prints_a_summary_and_writes_the_artifact(capsys, cnn, tmp_path):
    code, out, err = cli(capsys, "compile", cnn, "--target", "ort", "-o", tmp_path / "art")
    assert code == 0, err
    assert "verification" in out and "passed" in out and "nodes" in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["target"]["name"] == "ort" and manifest["verification"]["verdict"]["passed"]


def test_compile_json_and_cache(capsys, cnn):
    code, out, _ = cli(capsys, "compile", cnn, "--target", "ort", "--json")
    first = json.loads(out)
    assert code == 0 and not first["cached"] and first["verification"]["verdict"]["passed"]
    code, out, _ = cli(capsys, "compile", cnn, "--target", "ort", "--json")
    assert json.loads(out)["cached"]
    code, out, _ = cli(capsys, "compile", cnn, "--target", "ort", "--json", "--no-cache")
    assert not json.loads(out)["cached"]


def test_run_reproduces_the_verified_outputs(capsys, cnn, tmp_path):
    assert cli(capsys, "compile", cnn, "-t", "ort", "-o", tmp_path / "art")[0] == 0
    code, out, err = cli(capsys, "run", tmp_path / "art", "--json", "-o", tmp_path / "out.npz")
    assert code == 0, err
    report = json.loads(out)
    assert report["max_abs_diff_to_verified"] == {"y": 0.0}
    with np.load(tmp_path / "out.npz") as data:
        assert data["y"].shape == (1, 64, 16)


@pytest.mark.parametrize("feeds, message", [
    ({"nope": np.zeros((1, 4, 8, 8), np.float32)}, "missing x"),
    ({"x": np.zeros((1, 4, 8, 8), np.float64)}, "float64"),
    ({"x": np.zeros((1, 4, 9, 8), np.float32)}, "shape"),
])
def test_run_with_wrong_feeds_is_one_line_exit_2(capsys, cnn, tmp_path, feeds, message):
    assert cli(capsys, "compile", cnn, "-t", "ort", "-o", tmp_path / "art")[0] == 0
    np.savez(tmp_path / "bad.npz", **feeds)
    code, out, err = cli(capsys, "run", tmp_path / "art", "--inputs", tmp_path / "bad.npz")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--target", "nope"], "unknown target 'nope'"),
    (["--target", "ort", "-p", "no-such-pass"], "unknown pass"),
    (["--target", "ort", "--bind", "t"], "--bind expects"),
    (["--target", "ort", "--inputs", "missing.npz"], "not found"),
])
def test_compile_errors_are_one_line(capsys, cnn, args, message):
    code, out, err = cli(capsys, "compile", cnn, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_run_refuses_a_non_artifact(capsys, tmp_path):
    code, _, err = cli(capsys, "run", tmp_path)
    assert code == 2 and "not a vidcc artifact" in err


def test_failed_verification_exits_3_and_writes_no_output(capsys, cnn, tmp_path, monkeypatch):
    from vidcc import verification

    monkeypatch.setitem(verification.GATES, "exact", verification.Gate("exact", max_rel=-1.0))
    code, out, err = cli(capsys, "compile", cnn, "-t", "ort", "-o", tmp_path / "art")
    assert code == 3 and "verification failed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "art").exists()


def test_static_shapes_specialize_the_graph_and_fuse_attention(capsys, tmp_path):
    # every named dim bound: the shape bookkeeping folds away (dynamic shapes keep some of it)
    code, out, err = cli(capsys, "compile", "svd-unet:tiny", "-t", "ort", "--static-shapes", "-o", tmp_path / "art")
    assert code == 0, err
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["static_shapes"] == {"frames": 2, "height": 16, "width": 16}
    assert manifest["graph"]["inputs"]["sample"]["shape"] == [1, 2, 8, 16, 16]
    stats = {r["name"]: r["stats"] for r in manifest["pass_log"]}
    assert stats["fuse-attention"]["Attention"] == "16/16"
    assert manifest["verification"]["verdict"]["passed"]
    dynamic = json.loads(cli(capsys, "compile", "svd-unet:tiny", "-t", "ort", "--json")[1])
    assert dynamic["nodes_after"] > manifest["graph"]["nodes_after"]
    dynamic_log = json.loads((Path(dynamic["artifact"]) / "manifest.json").read_text())["pass_log"]
    # the head size is static under dynamic frames/height/width too: attention fuses either way
    assert {r["name"]: r["stats"] for r in dynamic_log}["fuse-attention"]["Attention"] == "16/16"

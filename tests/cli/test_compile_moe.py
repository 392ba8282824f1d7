"""`vidcc compile --schedule/--bind` on MoE models: one engine per routing decision, a step table,
verification of every bound value against the unspecialized graph; `vidcc run --step K`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.passes import moe_graphs as mg
from vidcc.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # a private artifact cache; zoo exports stay shared (they take a minute each to make)
    from vidcc.zoo.cache import cache_root

    monkeypatch.setenv("VIDCC_ZOO_CACHE_DIR", str(cache_root()))
    monkeypatch.setenv("VIDCC_CACHE_DIR", str(tmp_path / "cache"))


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def where_model(tmp_path):
    path = tmp_path / "wan22_where.onnx"
    onnx.save(mg.wan22_where(), path)
    np.savez(tmp_path / "wan22_where.inputs.npz", **mg.feeds(900))
    return path


def test_bind_gives_one_engine_per_route(capsys, where_model, tmp_path):
    code, out, err = cli(capsys, "compile", where_model, "--target", "ort", "--bind", "timestep=999,900,500,100",
                         "-o", tmp_path / "art", "--json")
    assert code == 0, err
    summary = json.loads(out)
    routes = summary["routes"]
    assert [e["steps"] for e in routes["engines"]] == [[0, 1], [2, 3]]
    assert [r["engine"] for r in routes["table"]] == [0, 0, 1, 1]
    assert all(v["passed"] for e in routes["engines"] for v in e["verification"]["per_value"])
    for e in routes["engines"]:
        assert (tmp_path / "art" / e["dir"] / "model.onnx").is_file()
        assert e["weight_fraction"] < 0.55
    # run picks the engine by step and feeds the step's timestep
    code, out, err = cli(capsys, "run", tmp_path / "art", "--step", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == {"step": 3, "timestep": 100, "engine": 1}
    code, out, err = cli(capsys, "run", tmp_path / "art", "--json")  # stored inputs: step 0, reproduced
    assert code == 0 and max(json.loads(out)["max_abs_diff_to_verified"].values()) == 0.0
    code, _, err = cli(capsys, "run", tmp_path / "art", "--step", "4")
    assert code == 2 and "out of range" in err


def test_schedule_needs_a_known_input(capsys, where_model):
    code, _, err = cli(capsys, "compile", where_model, "--target", "ort", "--schedule", "wan22-t2v",
                       "--schedule-input", "nope")
    assert code == 2 and "not an input" in err
    code, _, err = cli(capsys, "compile", where_model, "--target", "ort", "--schedule", "wan22-x")
    assert code == 2 and "unknown schedule" in err


def test_wan22_moe_t2v_schedule_two_engines_40_rows(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    # the working tree may change under a running test (its digest is part of the cache key)
    monkeypatch.setattr("vidcc.artifact._source_digest", lambda: "test")
    code, out, err = cli(capsys, "compile", "wan22-moe:tiny", "--target", "ort", "--schedule", "wan22-t2v",
                         "-o", tmp_path / "art", "--json")
    assert code == 0, err
    summary = json.loads(out)
    routes = summary["routes"]
    assert len(routes["engines"]) == 2 and len(routes["table"]) == 40
    assert [r["engine"] for r in routes["table"]] == [0] * 26 + [1] * 14
    assert [r["schedule_expert"] for r in routes["table"]] == ["high-noise"] * 26 + ["low-noise"] * 14
    assert routes["schedule"]["counts"] == {"high-noise": 26, "low-noise": 14}
    for e in routes["engines"]:
        assert len(e["verification"]["per_value"]) == len(e["steps"])
        assert all(v["passed"] and v["max_rel"] <= 1e-4 for v in e["verification"]["per_value"])
        assert e["weight_bytes"] <= 0.52 * routes["weight_bytes_original"]
    assert summary["verification"]["verdict"]["passed"]
    code, out, err = cli(capsys, "run", tmp_path / "art", "--step", "30", "--json")
    assert code == 0, err
    assert json.loads(out)["step"]["engine"] == 1
    # the same compile again comes from the cache
    code, out, _ = cli(capsys, "compile", "wan22-moe:tiny", "--target", "ort", "--schedule", "wan22-t2v", "--json")
    assert code == 0 and json.loads(out)["cached"]

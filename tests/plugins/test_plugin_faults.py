"""Faulty third-party passes, installed through the real entry-point mechanism and run via the CLI:
each is rolled back and reported with its plugin's name; --keep-going skips it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.conftest import run_ort
from tests.plugins.test_plugins import vidcc, write_plugin_dist

FAULTY = '''
import time
from dataclasses import dataclass
from vidcc.hookspecs import hookimpl
from vidcc.pass_manager import Pass, PassResult

@dataclass(frozen=True)
class Raises(Pass):
    """Deletes a node, then raises."""
    name = "faulty-raise"
    def run(self, graph, ctx):
        graph.remove_node(graph.nodes_by_op("Sigmoid")[0])
        raise RuntimeError("plugin bug")

@dataclass(frozen=True)
class Corrupts(Pass):
    """Returns a graph that fails verify(): a dangling input."""
    name = "faulty-corrupt"
    def run(self, graph, ctx):
        relu = graph.nodes_by_op("Relu")[0]
        graph.set_input(relu, 0, "does_not_exist")
        return PassResult(True)

@dataclass(frozen=True)
class Hangs(Pass):
    """Never returns."""
    name = "faulty-hang"
    def run(self, graph, ctx):
        graph.remove_node(graph.nodes_by_op("Sigmoid")[0])
        while True:
            time.sleep(0.05)

@hookimpl
def vidcc_register_passes(register):
    for cls in (Raises, Corrupts, Hangs):
        register(cls)
'''


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("faulty-site")
    write_plugin_dist(site, "vidcc-faulty", "faulty", "vidcc_faulty", FAULTY)
    return site


@pytest.mark.parametrize("spec, message", [
    ("faulty-raise", "pass 'faulty-raise' (plugin 'faulty') failed: RuntimeError: plugin bug; the graph was rolled back"),
    ("faulty-corrupt", "pass 'faulty-corrupt' (plugin 'faulty') failed: node relu (Relu#2): input 0 'does_not_exist'"),
    ("faulty-hang", "pass 'faulty-hang' (plugin 'faulty') failed: ran longer than its 1 s time limit"),
])
def test_fault_stops_cleanly_with_plugin_name(faulty_site, mlp_path, tmp_path, spec, message):
    out = tmp_path / "out.onnx"
    r = vidcc("opt", str(mlp_path), "-p", f"remove-identity,{spec}", "-o", str(out), "--verify-each",
              "--pass-timeout", "1", path=faulty_site)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()


def test_keep_going_skips_faulty_passes_and_output_is_correct(faulty_site, mlp_path, tmp_path):
    out = tmp_path / "out.onnx"
    r = vidcc("opt", str(mlp_path), "-p", "faulty-raise,faulty-corrupt,faulty-hang,remove-identity", "-o", str(out),
              "--verify-each", "--pass-timeout", "1", "--keep-going", "--json", path=faulty_site)
    assert r.returncode == 0, r.stderr
    log = json.loads(r.stdout)["passes"]
    assert [(p["name"], bool(p["error"])) for p in log] == [
        ("faulty-raise", True), ("faulty-corrupt", True), ("faulty-hang", True), ("remove-identity", False)]
    assert all("plugin 'faulty'" in p["error"] for p in log[:3])
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops == ["MatMul", "Add", "Relu", "Sigmoid"]  # the faulty passes' deletions were rolled back
    feeds = {"x": np.ones((3, 4), np.float32)}
    assert np.array_equal(run_ort(mlp_path, feeds)["y"], run_ort(out, feeds)["y"])

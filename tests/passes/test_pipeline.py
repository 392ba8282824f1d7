"""Spec parsing, option typing, and the pass manager's verification and rollback."""

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from onnx import TensorProto as T

from vidcc import onnx_io, plugins
from vidcc.errors import PassError, SpecError
from vidcc.hookspecs import hookimpl
from vidcc.ir import TensorType
from vidcc.pass_manager import IRDumpInstrument, Pass, PassContext, PassManager, PassResult, TimingInstrument, run_pipeline
from vidcc.pipeline import build_pipeline, parse_spec


@dataclass(frozen=True)
class Scale(Pass):
    """Test pass with typed options."""

    name = "test-scale"
    ratio: float = 0.5
    steps: int = 1
    mode: Literal["l1", "l2"] = "l1"
    exact: bool = False
    skip: tuple[str, ...] = ()

    def run(self, graph, ctx):
        return PassResult(False)


@dataclass(frozen=True)
class Explode(Pass):
    """Mutates the graph, then raises."""

    name = "test-explode"

    def run(self, graph, ctx):
        node = graph.nodes_by_op("Relu")[0]
        graph.add_node("Neg", ["x"], ["neg_out"], types=[TensorType(T.FLOAT)])
        graph.set_input(node, 0, "neg_out")
        node.name = "mangled"
        exc = RuntimeError("boom")
        exc.node = node
        raise exc


@dataclass(frozen=True)
class Dangle(Pass):
    """Leaves a dangling use: verify() must catch it."""

    name = "test-dangle"

    def run(self, graph, ctx):
        graph.set_input(graph.nodes_by_op("Relu")[0], 0, "nowhere")
        return PassResult(True)


@dataclass(frozen=True)
class Hang(Pass):
    """Never finishes."""

    name = "test-hang"

    def run(self, graph, ctx):
        graph.add_node("Neg", ["x"], ["hang_out"], types=[TensorType(T.FLOAT)])
        while True:
            time.sleep(0.01)


class TestPlugin:
    @hookimpl
    def vidcc_register_passes(self, register):
        for cls in (Scale, Explode, Dangle, Hang):
            register(cls)

    @hookimpl
    def vidcc_register_pipelines(self, register):
        register("test-both", "remove-identity,dce", "identity removal then DCE")


@pytest.fixture(autouse=True)
def test_plugin():
    plugins.reset(extra=[("test-plugin", TestPlugin())])


def test_parse_spec_forms():
    specs = parse_spec(' a , b{k=v, k2 = "x,y{}"}, c{l=[1, 2,"3,4"]} ,d{}')
    assert [(s.name, s.options) for s in specs] == [
        ("a", {}), ("b", {"k": "v", "k2": "x,y{}"}), ("c", {"l": ["1", "2", "3,4"]}), ("d", {})]
    assert parse_spec("") == []


@pytest.mark.parametrize("spec, message", [
    ("a{k=v", "missing '}'"),
    ("a{k}", "expected key=value"),
    ("a{k=1,k=2}", "given twice"),
    ("a b", "expected ','"),
    ('a{k="x}', "unterminated quote"),
    (",", "expected a pass name"),
])
def test_parse_spec_errors_say_where(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_options_are_typed_and_validated():
    (p,) = build_pipeline("test-scale{ratio=0.3,steps=4,mode=l2,exact=true,skip=[a,b]}")
    assert (p.ratio, p.steps, p.mode, p.exact, p.skip) == (0.3, 4, "l2", True, ("a", "b"))
    assert p.spec == "test-scale{ratio=0.3,steps=4,mode=l2,exact=true,skip=[a,b]}"
    assert build_pipeline(p.spec)[0] == p  # the spec recreates the pass
    for bad, msg in [("test-scale{ratio=x}", "option 'ratio': 'x' is not a number"),
                     ("test-scale{mode=l3}", "'l3' is not one of l1, l2"),
                     ("test-scale{exact=maybe}", "not a boolean"),
                     ("test-scale{nope=1}", "has no option 'nope'"),
                     ("test-scal", "did you mean 'test-scale'"),
                     ("test-both{x=1}", "takes no options")]:
        with pytest.raises(SpecError, match=bad and msg):
            build_pipeline(bad)


def test_named_pipeline_expands():
    assert [p.name for p in build_pipeline("test-both,test-scale")] == ["remove-identity", "dce", "test-scale"]


def test_passes_run_verify_and_log(mlp_path):
    graph = onnx_io.load(mlp_path)
    timing = TimingInstrument()
    ctx = run_pipeline(graph, "remove-identity,dce", PassContext(verify_each=True, instruments=[timing]))
    assert [r.name for r in ctx.log] == ["remove-identity", "dce"]
    assert ctx.log[1].stats == {"nodes_removed": 1, "constants_removed": 0}
    assert [n.op_type for n in graph.toposort()] == ["MatMul", "Add", "Relu"]
    assert graph.outputs == ["y"] and graph.producer("y").op_type == "Relu"
    assert set(timing.seconds) == {"remove-identity", "dce"}


def _bytes(graph):
    return onnx_io.to_proto(graph).SerializeToString(deterministic=True)


@pytest.mark.parametrize("spec, expect", [
    ("test-explode", r"pass 'test-explode' \(plugin 'test-plugin'\) failed at node mangled.*boom.*rolled back"),
    ("test-dangle", r"pass 'test-dangle' \(plugin 'test-plugin'\) failed: node relu.*'nowhere'.*no dangling uses"),
])
def test_failing_pass_rolls_back_exactly(mlp_path, spec, expect):
    graph = onnx_io.load(mlp_path)
    before = _bytes(graph)
    with pytest.raises(PassError, match=expect) as info:
        run_pipeline(graph, spec, PassContext(verify_each=True))
    assert info.value.plugin == "test-plugin" and info.value.pass_name == spec
    assert _bytes(graph) == before


def test_hanging_pass_times_out_and_keep_going_continues(mlp_path):
    graph = onnx_io.load(mlp_path)
    before = _bytes(graph)
    with pytest.raises(PassError, match="time limit"):
        run_pipeline(graph, "test-hang", PassContext(pass_timeout=0.2))
    assert _bytes(graph) == before
    ctx = run_pipeline(graph, "test-explode,dce", PassContext(keep_going=True, verify_each=True))
    assert ctx.log[0].error and ctx.log[1].name == "dce" and ctx.log[1].modified


def test_fixpoint_and_disabled(mlp_path):
    graph = onnx_io.load(mlp_path)
    ctx = PassContext(disabled={"dce"})
    PassManager(build_pipeline("remove-identity,dce"), fixpoint=True).run(graph, ctx)
    assert [r.name for r in ctx.log] == ["remove-identity", "remove-identity"]  # second round: no change
    assert "Sigmoid" in graph.op_histogram()


def test_ir_dump_instrument(mlp_path, tmp_path):
    graph = onnx_io.load(mlp_path)
    run_pipeline(graph, "remove-identity,dce", PassContext(instruments=[IRDumpInstrument(tmp_path / "dump", onnx=True)]))
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["000-remove-identity.onnx", "000-remove-identity.txt", "001-dce.onnx", "001-dce.txt"]
    assert "Sigmoid" not in (tmp_path / "dump" / "001-dce.txt").read_text()


def test_hooks_observe_passes(mlp_path):
    seen = []

    class Observer:
        @hookimpl
        def vidcc_before_pass(self, pass_, graph, ctx):
            seen.append(("before", pass_.name))

        @hookimpl
        def vidcc_after_pass(self, pass_, graph, ctx, result):
            seen.append(("after", pass_.name, result.modified))

    plugins.reset(extra=[("observer", Observer())])
    run_pipeline(onnx_io.load(mlp_path), "dce")
    assert seen == [("before", "dce"), ("after", "dce", True)]

"""The rewrite-pattern engine: matching, commutation, shared sub-patterns, refusal reasons, driver."""

import numpy as np
from onnx import TensorProto as T

from tests.passes.fusion_helpers import ops, parse
from vidcc import onnx_io
from vidcc.ir import Graph, TensorType, verify
from vidcc.pass_manager import PassContext
from vidcc.rewrite import Const, Keep, Matcher, P, Rule, Var, _Fail, apply_rules, emit

F = TensorType(T.FLOAT, (2, 3))


def silu_graph(order="xs") -> Graph:
    g = Graph("g")
    g.inputs.append("x")
    g.types["x"] = F
    g.add_node("Sigmoid", ["x"], ["s"], name="sig", types=[F])
    g.add_node("Mul", ["x", "s"] if order == "xs" else ["s", "x"], ["y"], name="mul", types=[F])
    g.outputs.append("y")
    return g


def swish_rule(check=None):
    x = Var("x")
    pat = P("Mul", x, P("Sigmoid", x, name="sig"), name="mul")
    return Rule("SiLU", pat, lambda m, g, c: [emit(g, "Swish", [m["x"]], like=m.node("mul")).outputs[0]],
                check=check, anchor="sig")


def test_match_binds_nodes_and_values_in_either_operand_order():
    for order in ("xs", "sx"):
        g = silu_graph(order)
        m = Matcher(g).match(swish_rule().pattern, g.producer("y"))
        assert m["x"] == "x" and m.node("sig").name == "sig" and m.node("mul").name == "mul"


def test_same_var_must_bind_same_tensor():
    g = silu_graph()
    g.inputs.append("z")
    g.types["z"] = F
    g.set_input(g.producer("s"), 0, "z")  # Mul(x, Sigmoid(z)) is not SiLU
    try:
        Matcher(g).match(swish_rule().pattern, g.producer("y"))
        raise AssertionError("matched")
    except _Fail as f:
        assert "same tensor" in f.reason


def test_driver_fuses_and_reports_stats_and_keeps_output_name():
    g = silu_graph()
    out = apply_rules(g, [swish_rule()], PassContext())
    assert out.stats() == {"SiLU": "1/1"}
    assert ops(g) == ["Swish"] and g.outputs == ["y"] and g.producer("y").op_type == "Swish"
    assert out.details[0]["kind"] == "fused" and out.details[0]["node"] == "sig"
    verify(g)


def test_check_refusal_reason_is_recorded():
    g = silu_graph()
    out = apply_rules(g, [swish_rule(check=lambda m, g, c: "mask input is not constant")], PassContext())
    assert out.stats() == {"SiLU": "0/1"} and ops(g) == ["Sigmoid", "Mul"]
    assert out.details == [{"kind": "refused", "pattern": "SiLU", "node": "sig", "reason": "mask input is not constant"}]


def test_intermediate_used_outside_is_refused_with_reason():
    g = silu_graph()
    g.add_node("Neg", ["s"], ["n"], name="neg", types=[F])
    g.outputs.append("n")
    out = apply_rules(g, [swish_rule()], PassContext())
    assert out.stats() == {"SiLU": "0/1"}
    assert "also used by Neg 'neg'" in out.details[0]["reason"]


def test_anchor_not_consumed_like_the_pattern_is_no_candidate():
    g = Graph("g")
    g.inputs.append("x")
    g.types["x"] = F
    g.add_node("Sigmoid", ["x"], ["y"], name="sig", types=[F])
    g.outputs.append("y")
    out = apply_rules(g, [swish_rule()], PassContext())
    assert out.stats() == {} and out.details == []


def test_alternative_forms_and_deepest_reason():
    # two forms of one fusion: the refusal reports the form that got furthest
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        two = Constant<value = float {3.0}>()
        p = Pow(x, two)
        y = Sqrt(p)
    }""")
    g = onnx_io.from_proto(model)
    from vidcc.pass_manager import run_pipeline
    run_pipeline(g, "fold-constants", PassContext())
    x = Var("x")
    rw = lambda m, g, c: [emit(g, "Abs", [m["x"]]).outputs[0]]  # noqa: E731
    a = Rule("SqrtSquare", P("Sqrt", P("Pow", x, Const("e", value=2.0), name="pow"), name="sqrt"), rw, anchor="pow", form="pow")
    b = Rule("SqrtSquare", P("Sqrt", P("Mul", x, x, name="pow"), name="sqrt"), rw, anchor="pow", form="mul")
    out = apply_rules(g, [a, b], PassContext())
    assert out.stats() == {"SqrtSquare": "0/1"}
    assert out.details[0]["reason"].startswith("pow: constant") and "is not 2.0" in out.details[0]["reason"]


def test_keep_counts_as_done_without_change():
    g = silu_graph()
    rule = Rule("SiLU", swish_rule().pattern, lambda m, g, c: Keep("already best"), anchor="sig")
    out = apply_rules(g, [rule], PassContext())
    assert out.stats() == {"SiLU": "1/1", "SiLU kept": 1} and not out.modified
    assert ops(g) == ["Sigmoid", "Mul"]


def test_attribute_constraints_and_strict_arity():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3, 4] x) => (float[2, 4, 3] y) {
        t = Transpose<perm = [0, 2, 1]>(x)
        y = Relu(t)
    }""")
    g = onnx_io.from_proto(model)
    root = g.producer("y")
    Matcher(g).match(P("Relu", P("Transpose", Var("x"), perm=[0, 2, 1])), root)
    try:
        Matcher(g).match(P("Relu", P("Transpose", Var("x"), perm=[0, 1, 2])), root)
        raise AssertionError("matched")
    except _Fail as f:
        assert "perm" in f.reason
    assert np.isfinite(1.0)

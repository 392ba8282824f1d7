import numpy as np
import pytest
from onnx import TensorProto as T

from vidcc import onnx_io
from vidcc.errors import VerifyError
from vidcc.ir import Graph, TensorType, verify
from vidcc.ir.verify import problems


def small_graph():
    g = Graph("g")
    g.inputs.append("x")
    g.types["x"] = TensorType(T.FLOAT, ("frames", 4))
    w = g.add_constant(np.ones((4, 4), np.float32), "w")
    mm = g.add_node("MatMul", ["x", w], ["m"], name="mm", types=[TensorType(T.FLOAT, ("frames", 4))])
    r = g.add_node("Relu", ["m"], ["y"], name="relu", types=[TensorType(T.FLOAT, ("frames", 4))])
    g.outputs.append("y")
    return g, mm, r


def test_edges_indexes_and_lookups():
    g, mm, r = small_graph()
    verify(g)
    assert g.producer("m") is mm and g.producer("x") is None
    assert g.consumers("m") == [(r, 0)]
    assert [n.name for n in g.nodes_by_op("Relu")] == ["relu"]
    (u, v, data), = g.nx.edges(data=True)
    assert (u, v) == (mm.id, r.id) and data["tensor"] == "m" and data["src_slot"] == 0 and data["dst_slot"] == 0
    assert g.type_of("w") == TensorType(T.FLOAT, (4, 4))
    assert [n.name for n in g.toposort()] == ["mm", "relu"]


def test_replace_all_uses_and_remove_keep_indexes_consistent():
    g, mm, r = small_graph()
    neg = g.add_node("Neg", ["x"], ["n"], types=[TensorType(T.FLOAT, ("frames", 4))])
    g.replace_all_uses("m", "n")
    assert g.consumers("m") == [] and g.consumers("n") == [(r, 0)]
    assert list(g.nx.predecessors(r.id)) == [neg.id]
    verify(g)
    g.set_input(r, 0, "m")
    g.remove_node(neg)
    assert g.consumers("n") == [] and g.nodes_by_op("Neg") == []
    verify(g)


def test_replace_graph_output_keeps_output_name():
    g, mm, r = small_graph()
    g.remove_node(r)  # y's producer gone: y must now come from m, which has no other reader
    g.replace_all_uses("y", "m")
    assert g.outputs == ["y"] and g.producer("y") is mm
    verify(g)
    g2, mm2, r2 = small_graph()
    g2.replace_all_uses("y", "m")  # m is still read by relu: the output becomes an Identity of m
    assert g2.producer("y").op_type == "Identity" and g2.producer("y").inputs == ["m"]
    assert g2.producer("y_dead") is r2
    verify(g2)


def test_verify_names_node_and_rule():
    g, mm, r = small_graph()
    g.add_node("Add", ["ghost", "m"], ["z"], name="adder", types=[TensorType(T.FLOAT)])
    with pytest.raises(VerifyError, match=r"adder .*'ghost'.*no dangling uses"):
        verify(g)


def test_verify_detects_cycle_and_missing_dtype():
    g, mm, r = small_graph()
    g.set_input(mm, 0, "y")
    with pytest.raises(VerifyError, match="cycle.*acyclic"):
        verify(g)
    g2, _, _ = small_graph()
    g2.add_node("Abs", ["y"], ["untyped"], name="abs")
    assert any("untyped" in p and "dtype" in p for p in problems(g2))


def test_duplicate_producer_refused():
    g, mm, r = small_graph()
    with pytest.raises(VerifyError, match="one producer per tensor"):
        g.add_node("Neg", ["x"], ["m"])
    verify(g)  # the refused node left nothing behind


def test_snapshot_restore_is_exact():
    g, mm, r = small_graph()
    before = onnx_io.to_proto(g).SerializeToString(deterministic=True)
    snap = g.snapshot()
    g.add_node("Neg", ["y"], ["z"])
    g.set_input(r, 0, "x")
    mm.name = "renamed"  # a pass editing a node record directly
    g.set_attr(r, "alpha", 1.0)
    g.restore(snap)
    verify(g)
    assert onnx_io.to_proto(g).SerializeToString(deterministic=True) == before


def test_constants_are_read_only():
    g, _, _ = small_graph()
    with pytest.raises(ValueError):
        g.constant("w")[0, 0] = 5


def test_subgraph_outer_names_are_uses():
    from onnx import helper

    g, mm, r = small_graph()
    then_g = helper.make_graph([helper.make_node("Neg", ["m"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Abs", ["y"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, None)])
    g.inputs.append("c")
    g.types["c"] = TensorType(T.BOOL, ())
    node = g.add_node("If", ["c"], ["o"], attrs={"then_branch": then_g, "else_branch": else_g},
                      types=[TensorType(T.FLOAT)])
    assert node.implicit_inputs == ("m", "y")
    assert (node, -1) in g.consumers("m")
    g.replace_all_uses("m", "x")
    assert node.implicit_inputs == ("x", "y")
    assert node.attr("then_branch").node[0].input[0] == "x"
    verify(g)

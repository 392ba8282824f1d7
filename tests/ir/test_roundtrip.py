"""Import then export is lossless: checker accepts, ORT outputs are bit-identical, bytes are stable."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model, run_ort
from vidcc import onnx_io


def roundtrip(model, tmp_path, name="rt"):
    src = tmp_path / f"{name}_src.onnx"
    onnx.save(model, src)
    out1, out2 = tmp_path / f"{name}1.onnx", tmp_path / f"{name}2.onnx"
    onnx_io.save(onnx_io.load(src), out1)
    onnx_io.save(onnx_io.load(out1), out2)
    return src, out1, out2


def test_mlp_roundtrip_bit_identical_and_deterministic(mlp_model, tmp_path):
    src, out1, out2 = roundtrip(mlp_model, tmp_path)
    onnx.checker.check_model(str(out1), full_check=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    a, b = run_ort(src, feeds), run_ort(out1, feeds)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert out1.read_bytes() == out2.read_bytes()
    m = onnx.load(out1)
    assert m.doc_string == "mlp" and [(p.key, p.value) for p in m.metadata_props] == [("source", "tests")]
    assert m.ir_version == 8 and [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    assert [n.name for n in m.graph.node] == [n.name for n in mlp_model.graph.node]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_subgraphs_attributes_domains_doc_strings_survive(tmp_path):
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, [2])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum", doc_string="sum doc"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="cmp"),
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("LeakyRelu", ["y"], ["z"], alpha=0.25, name="leaky"),
    ]
    nodes[3].metadata_props.add(key="origin", value="test")
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2])],
                   [helper.make_tensor_value_info("z", T.FLOAT, [2])], inits, opset=18, ir_version=10)
    m.opset_import.add(domain="com.microsoft", version=1)
    m.producer_name, m.producer_version, m.model_version = "pytest", "1.2", 7
    src, out1, out2 = roundtrip(m, tmp_path)
    onnx.checker.check_model(str(out1), full_check=True)
    for x in (np.array([1.0, 2.0], np.float32), np.array([-1.0, -2.0], np.float32)):
        a, b = run_ort(src, {"x": x}), run_ort(out1, {"x": x})
        assert np.array_equal(a["z"], b["z"])
    r = onnx.load(out1)
    assert (r.producer_name, r.producer_version, r.model_version) == ("pytest", "1.2", 7)
    assert {(o.domain, o.version) for o in r.opset_import} == {("", 18), ("com.microsoft", 1)}
    by_name = {n.name: n for n in r.graph.node}
    assert by_name["sum"].doc_string == "sum doc"
    assert [(p.key, p.value) for p in by_name["leaky"].metadata_props] == [("origin", "test")]
    assert by_name["branch"].attribute[0].g == m.graph.node[2].attribute[0].g
    assert out1.read_bytes() == out2.read_bytes()


def test_external_data_is_mapped_not_copied(tmp_path):
    big = np.arange(4096, dtype=np.float32).reshape(64, 64)
    m = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", T.FLOAT, [1, 64])],
                   [helper.make_tensor_value_info("y", T.FLOAT, [1, 64])],
                   [numpy_helper.from_array(big, "W")])
    src = tmp_path / "ext.onnx"
    onnx.save(m, src, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    g = onnx_io.load(src)
    c = g.constants["W"]
    assert c.is_external
    assert isinstance(c.array.base, (np.ndarray, memoryview)) or c.array.base is not None
    assert np.array_equal(c.array, big)
    out = tmp_path / "out" / "model.onnx"
    onnx_io.save(g, out)
    assert (out.parent / "model.onnx.data").is_file()
    x = {"x": np.ones((1, 64), np.float32)}
    assert np.array_equal(run_ort(src, x)["y"], run_ort(out, x)["y"])


@pytest.mark.slow
def test_over_2gb_external_data_roundtrip(tmp_path):
    """A 2.25 GB model made cheaply: the data file is sparse (zeros) and the graph reads a few values."""
    n = 150_000_000  # float32 -> 600 MB per tensor, 4 tensors
    names = [f"W{i}" for i in range(4)]
    data = tmp_path / "big.onnx.data"
    inits, nodes, outputs = [], [], []
    with open(data, "wb") as f:
        f.truncate(n * 4 * len(names))
    for i, name in enumerate(names):
        t = onnx.TensorProto(name=name, data_type=T.FLOAT, dims=[n])
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", data.name), ("offset", str(i * n * 4)), ("length", str(n * 4))):
            t.external_data.add(key=k, value=v)
        inits.append(t)
        nodes.append(helper.make_node("Slice", [name, "starts", "ends"], [f"s{i}"]))
        outputs.append(helper.make_tensor_value_info(f"s{i}", T.FLOAT, [3]))
    inits += [numpy_helper.from_array(np.array([n - 3], np.int64), "starts"),
              numpy_helper.from_array(np.array([n], np.int64), "ends")]
    m = make_model(nodes, [], outputs, inits)
    src = tmp_path / "big.onnx"
    onnx.save(m, src)
    g = onnx_io.load(src)
    assert sum(c.nbytes for c in g.constants.values()) > 2 * 2**30
    out1, out2 = tmp_path / "o1" / "big.onnx", tmp_path / "o2" / "big.onnx"
    onnx_io.save(g, out1)
    onnx.checker.check_model(str(out1))
    onnx_io.save(onnx_io.load(out1), out2)
    assert out1.read_bytes() == out2.read_bytes()
    assert (out1.parent / "big.onnx.data").stat().st_size >= n * 4 * len(names)
    res = run_ort(out1, {})
    assert all(np.array_equal(v, np.zeros(3, np.float32)) for v in res.values())

"""`vidcc zoo list` and `vidcc zoo export`, and copying an export with external data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.conftest import needs_zoo
from vidcc import zoo
from vidcc.cli import main


def test_list_json(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(zoo.ENTRIES)
    svd = rows[0]
    assert svd["params"]["full"] == 1_524_623_082 and svd["exporters"] == ["legacy", "dynamo"]


def test_list_table(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "svd-unet" in out and "wan22-moe" in out and "1.52B" in out


def test_export_unknown_name_is_one_line(capsys, tmp_path):
    assert main(["zoo", "export", "nope:tiny", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidcc: error: unknown zoo model 'nope'") and "\n" not in err


@needs_zoo
def test_export_writes_model_and_sidecars(capsys, tmp_path):
    out = tmp_path / "sub" / "moe.onnx"
    assert main(["zoo", "export", "moe-dit:tiny", "--exporter", "legacy", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "moe-dit:tiny" and report["exporter"] == "legacy" and report["opset"] == 17
    assert report["files"] == {"model": str(out), "inputs": str(tmp_path / "sub" / "moe.inputs.npz"),
                               "reference": str(tmp_path / "sub" / "moe.reference.npz")}
    model = onnx.load(str(out))
    with np.load(tmp_path / "sub" / "moe.inputs.npz") as feeds:
        assert sorted(feeds.files) == sorted(i.name for i in model.graph.input)


def _external_export(tmp_path) -> zoo.ZooExport:
    """A cache-shaped directory holding a small model whose weight lives in model.onnx.data."""
    directory = tmp_path / "cache-entry"
    directory.mkdir()
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    x = np.ones((1, 64), np.float32)
    np.savez(directory / "inputs.npz", x=x)
    np.savez(directory / "reference.npz", y=x @ numpy_helper.to_array(weight))
    return zoo.ZooExport(zoo.ENTRIES["svd-unet"], "full", "legacy", 17, directory)


def test_copy_export_moves_external_data_with_the_model(tmp_path):
    import onnxruntime as ort

    exp = _external_export(tmp_path)
    written = zoo.copy_export(exp, tmp_path / "out" / "svd.onnx")
    assert written["data"] == tmp_path / "out" / "svd.onnx.data"
    assert written["data"].read_bytes() == exp.data_path.read_bytes()  # copied byte for byte
    session = ort.InferenceSession(str(written["model"]), providers=["CPUExecutionProvider"])
    with np.load(written["inputs"]) as feeds, np.load(written["reference"]) as ref:
        np.testing.assert_allclose(session.run(None, dict(feeds))[0], ref["y"])
    (exp.directory / "model.onnx.data").unlink()  # the copy must not point back into the cache
    ort.InferenceSession(str(written["model"]), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("argv", [["zoo"], ["zoo", "list"]])
def test_bare_zoo_lists(capsys, argv):
    assert main(argv) == 0
    assert "moe-dit-trouter" in capsys.readouterr().out


@pytest.mark.parametrize("value,message", [
    ("fps=3", "unknown static dim 'fps'; choose from frames, height, width"),
    ("frames=0", "static frames must be a positive integer"),
    ("frames=x", "static frames must be a positive integer"),
    ("frames", "bad static dim 'frames': write DIM=SIZE"),
])
def test_export_bad_static_is_one_line(capsys, tmp_path, value, message):
    assert main(["zoo", "export", "wan-dit:tiny", "--static", value, "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vidcc: error: {message}") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_parse_static():
    assert zoo.parse_static("width=104, frames=5,height=60") == {"frames": 5, "height": 60, "width": 104}
    assert zoo.parse_static("") == zoo.parse_static(None) == {}


@needs_zoo
def test_export_static_json(capsys, tmp_path):
    out = tmp_path / "moe.onnx"
    assert main(["zoo", "export", "moe-dit:tiny", "--exporter", "legacy", "--static", "frames=3,height=8,width=12",
                 "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["static"] == {"frames": 3, "height": 8, "width": 12}
    assert report["inputs"]["hidden_states"]["shape"] == [1, 4, 3, 8, 12]
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 4, 3, 8, 12]

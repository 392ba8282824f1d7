"""The CLI's core commands: opt round trip, inspect, passes/targets, one-line errors with exit 2."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from tests.conftest import make_model, run_ort
from vidcc.cli import main


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_opt_empty_pipeline_is_bit_identical_and_deterministic(capsys, mlp_path, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli(capsys, "opt", mlp_path, "-p", "", "-o", a)[0] == 0
    assert cli(capsys, "opt", mlp_path, "-p", "", "-o", b)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    onnx.checker.check_model(str(a), full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)}
    ref, got = run_ort(mlp_path, feeds), run_ort(a, feeds)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_opt_runs_passes_and_prints_ir(capsys, mlp_path, tmp_path):
    out = tmp_path / "o.onnx"
    code, stdout, _ = cli(capsys, "opt", mlp_path, "-p", "remove-identity,dce", "-o", out, "--print-ir", "--json")
    assert code == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["MatMul", "Add", "Relu"]
    feeds = {"x": np.ones((2, 4), np.float32)}
    assert np.array_equal(run_ort(mlp_path, feeds)["y"], run_ort(out, feeds)["y"])
    assert "%y: float[N,8] = Relu(%biased)" in stdout


def test_inspect_json(capsys, mlp_path):
    code, out, _ = cli(capsys, "inspect", mlp_path, "--json")
    info = json.loads(out)
    assert code == 0 and info["ops"] == {"Add": 1, "Identity": 1, "MatMul": 1, "Relu": 1, "Sigmoid": 1}
    assert info["params"] == 4 * 8 + 8 and info["weight_bytes"] == 40 * 4


def test_inspect_counts_flops_with_static_shapes(capsys, tmp_path):
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                   [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                   [helper.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])],
                   [onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")])
    onnx.save(m, tmp_path / "conv.onnx")
    info = json.loads(cli(capsys, "inspect", tmp_path / "conv.onnx", "--json")[1])
    assert info["macs"] == 4 * 8 * 8 * 3 * 3 * 3 and info["flops"] == 2 * info["macs"]


def _cycle_model():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("b", T.FLOAT, [2])])


def _dangling_model():
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("y", T.FLOAT, [2])])


def _duplicate_model():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="one"), helper.make_node("Neg", ["x"], ["y"], name="two")]
    return make_model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("y", T.FLOAT, [2])])


@pytest.mark.parametrize("make, message", [
    (_cycle_model, "cycle"),
    (_dangling_model, "adder.*'ghost'.*no dangling uses"),
    (_duplicate_model, "'y' is already produced by one.*one producer per tensor"),
])
def test_broken_graphs_get_one_line_and_exit_2(capsys, tmp_path, make, message):
    src = tmp_path / "bad.onnx"
    onnx.save(make(), src)
    out = tmp_path / "out.onnx"
    code, _, err = cli(capsys, "opt", src, "-p", "", "-o", out)
    assert code == 2 and err.count("\n") == 1 and err.startswith("vidcc: error:")
    import re

    assert re.search(message, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage\xff\xff", "truncate"])
def test_unreadable_files_get_one_line(capsys, tmp_path, mlp_path, content):
    src = tmp_path / "m.onnx"
    src.write_bytes(mlp_path.read_bytes()[:57] if content == "truncate" else content)
    code, _, err = cli(capsys, "inspect", src)
    assert code == 2 and err.count("\n") == 1 and ("not a readable ONNX model" in err or "holds no ONNX graph" in err)


def test_errors_name_the_problem(capsys, mlp_path, tmp_path):
    assert cli(capsys, "inspect", tmp_path / "missing.onnx")[2].strip() == f"vidcc: error: model file '{tmp_path / 'missing.onnx'}' not found"
    code, _, err = cli(capsys, "opt", mlp_path, "-p", "dce{bad=1}", "-o", tmp_path / "x.onnx")
    assert code == 2 and "has no option 'bad'" in err


def test_debug_shows_traceback(mlp_path, tmp_path):
    from vidcc.errors import SpecError

    with pytest.raises(SpecError):
        main(["--debug", "opt", str(mlp_path), "-p", "nope", "-o", str(tmp_path / "x.onnx")])


def test_passes_and_targets_list(capsys):
    code, out, _ = cli(capsys, "passes", "--json")
    assert code == 0 and {"dce", "remove-identity"} <= {p["name"] for p in json.loads(out)["passes"]}
    code, out, _ = cli(capsys, "targets", "--json")
    assert code == 0 and isinstance(json.loads(out)["targets"], list)


def test_costs_at_bound_shapes_include_attention_matmuls():
    # the attention MatMuls read shapes computed through Shape/Gather/Concat: counted only once folded
    import numpy as np

    from vidcc import onnx_io, stats, zoo

    exp = zoo.export("svd-unet:tiny")
    with np.load(exp.inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    graph = onnx_io.load(exp.model_path)
    bound = stats.summarize(stats.bind_input_shapes(graph, feeds))
    assert bound["nodes_with_unknown_cost"] == 0
    assert bound["flops"] > 1.5 * stats.summarize(graph)["flops"]
    assert len(graph) == 3608  # the caller's graph is left as it was

"""The bad-input corpus: each case is generated here, and each must give one clear error line naming
the problem, exit code 2, and leave no output file behind."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from tests.conftest import make_model
from vidcc.cli import main

X = helper.make_tensor_value_info("x", T.FLOAT, [2])
Y = helper.make_tensor_value_info("y", T.FLOAT, [2])


def one(op, inputs=("x",), outputs=("y",), name="n0", domain="", **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain, **attrs)


def _external(location: str, make_file: bool):
    def build(tmp_path):
        t = onnx.TensorProto(name="W", data_type=T.FLOAT, dims=[2])
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        if make_file:
            (tmp_path.parent / "secret.bin").write_bytes(np.ones(2, np.float32).tobytes())
        return make_model([one("Add", ["x", "W"])], [X], [Y], [t])
    return build


# name -> (builder returning ModelProto or bytes, regex the error line must match)
MODEL_CASES = {
    "empty file": (lambda p: b"", "not a readable ONNX model|holds no ONNX graph"),
    "garbage": (lambda p: b"\x0a\xff\xfe\x00garbage" * 10, "not a readable ONNX model"),
    "truncated": (lambda p: make_model([one("Relu")], [X], [Y]).SerializeToString()[:-9], "not a readable ONNX model"),
    "not onnx (text)": (lambda p: b"hello world, this is not protobuf", "not a readable ONNX model|holds no ONNX graph"),
    "cycle": (lambda p: make_model([one("Add", ["x", "b"], ["a"], name="first"), one("Relu", ["a"], ["b"], name="second")],
                                   [X], [helper.make_tensor_value_info("b", T.FLOAT, [2])]), "cycle"),
    "dangling input": (lambda p: make_model([one("Add", ["x", "ghost"])], [X], [Y]), "n0.*'ghost'.*no dangling uses"),
    "duplicate tensor names": (lambda p: make_model([one("Relu", name="a"), one("Neg", name="b")], [X], [Y]),
                               "'y' is already produced by a"),
    "duplicate initializer": (lambda p: make_model([one("Add", ["x", "W"])], [X], [Y],
                                                   [numpy_helper.from_array(np.ones(2, np.float32), "W")] * 2),
                              "initializer 'W' is defined twice"),
    "input shadowed by node": (lambda p: make_model([one("Relu", ["x"], ["x"])], [X], [helper.make_tensor_value_info("x", T.FLOAT, [2])]),
                               "one producer per tensor"),
    "output nobody produces": (lambda p: make_model([one("Relu")], [X], [Y, helper.make_tensor_value_info("z", T.FLOAT, [2])]),
                               "graph output 'z' is produced by no node"),
    "unknown op": (lambda p: make_model([one("FrobnicateAll")], [X], [Y]), "No Op registered for FrobnicateAll.*n0"),
    "unknown domain": (lambda p: make_model([one("Relu", domain="acme.ops")], [X], [Y]), "n0 \\(Relu\\) uses unknown domain 'acme.ops'"),
    "opset too new": (lambda p: make_model([one("Relu")], [X], [Y], opset=999), "opset 999 is newer than this onnx supports"),
    "missing external data": (_external("weights.bin", False), "external data file 'weights.bin' not found"),
    "external data escapes dir": (_external("../secret.bin", True), "location '../secret.bin' escapes the model directory"),
    "absolute external path": (_external("/etc/passwd", False), "escapes the model directory"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("command", ["opt", "inspect"])
def test_bad_model(case, command, tmp_path, capsys):
    build, pattern = MODEL_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    src = work / "model.onnx"
    content = build(work)
    src.write_bytes(content if isinstance(content, bytes) else content.SerializeToString())
    before = sorted(p.name for p in work.iterdir())
    out = work / "out.onnx"
    args = ["opt", str(src), "-p", "", "-o", str(out)] if command == "opt" else ["inspect", str(src)]
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("vidcc: error: "), err
    assert re.search(pattern, err), err
    assert sorted(p.name for p in work.iterdir()) == before  # no output, no temp file left


SPEC_CASES = {
    "unknown pass": ("frobnicate", "unknown pass 'frobnicate'"),
    "unknown option": ("dce{speed=11}", "pass 'dce' has no option 'speed'"),
    "bad syntax": ("dce{", "missing '}'"),
    "bad list": ("dce,[", "expected a pass name"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_spec(case, mlp_path, tmp_path, capsys):
    spec, pattern = SPEC_CASES[case]
    out = tmp_path / "out.onnx"
    code = main(["opt", str(mlp_path), "-p", spec, "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err), err
    assert not out.exists()


def test_unknown_model_name(tmp_path, capsys):
    code = main(["inspect", "no-such-model"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err


def test_corpus_size():
    """The closing note quotes this number; keep it honest."""
    assert len(MODEL_CASES) * 2 + len(SPEC_CASES) + 1 >= 37

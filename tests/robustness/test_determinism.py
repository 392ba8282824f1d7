"""The same inputs give byte-identical optimized ONNX and manifests (timings live in timings.json)."""

import json

from vidcc.artifact import MANIFEST, TIMINGS, Artifact
from vidcc.cli import main


def test_compile_twice_is_byte_identical(mlp_path, tmp_path, monkeypatch, capsys):
    outs = []
    for i in range(2):
        monkeypatch.setenv("VIDCC_CACHE_DIR", str(tmp_path / f"cache{i}"))
        out = tmp_path / f"art{i}"
        assert main(["compile", str(mlp_path), "--target", "ort", "-o", str(out), "--no-cache", "--json"]) == 0
        outs.append(out)
    capsys.readouterr()
    a, b = outs
    for name in (MANIFEST, "model.onnx"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    timings = json.loads((a / TIMINGS).read_text())
    assert "created" in timings and "seconds" in timings["build"]
    assert "created" not in json.loads((a / MANIFEST).read_text())
    art = Artifact.open(a)  # the in-memory manifest has the timings back
    assert art.manifest["created"] == timings["created"] and "seconds" in art.manifest["build"]

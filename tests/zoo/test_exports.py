"""Every zoo entry exports at tiny with each exporter that works, and ONNX Runtime matches torch.

Exports are shared through the session cache (conftest.py), so each (entry, exporter) is exported once.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.zoo.conftest import needs_zoo
from vidcc import zoo
from vidcc.errors import VidccError

pytestmark = needs_zoo

TOL = 1e-4
# torch.export of the UNets takes tens of seconds each (tracing twice through fake tensors): marked slow.
SLOW = {("svd-unet", "dynamo"), ("animatediff-unet", "dynamo"), ("wan22-moe", "dynamo")}
COMBOS = [pytest.param(name, exporter, id=f"{name}-{exporter}",
                       marks=[pytest.mark.slow] if (name, exporter) in SLOW else [])
          for name, entry in zoo.ENTRIES.items() for exporter in entry.exporters]


def ort_run(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def torch_run(name, feeds):
    import torch

    from vidcc.zoo import models

    built = models.build(zoo.ENTRIES[name], "tiny")
    with torch.no_grad():
        out = built.module(*(torch.from_numpy(feeds[k]) for k in built.inputs))
    return {built.output_names[0]: out.numpy()}


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name,exporter", COMBOS)
def test_tiny_export_matches_torch(name, exporter):
    exp = zoo.export(f"{name}:tiny", exporter=exporter)
    assert (exp.entry.name, exp.size, exp.exporter) == (name, "tiny", exporter)
    assert exp.opset == {"legacy": 17, "dynamo": 18}[exporter]
    for path in (exp.model_path, exp.inputs_path, exp.reference_path):
        assert path.is_file()
    assert exp.data_path is None  # tiny keeps its weights inside model.onnx

    model = onnx.load(str(exp.model_path))
    assert model.ir_version <= 10 and model.opset_import[0].version == exp.opset
    feeds, reference = npz(exp.inputs_path), npz(exp.reference_path)
    assert [i.name for i in model.graph.input] == list(feeds)  # sample inputs named as the graph inputs
    assert [o.name for o in model.graph.output] == list(reference)
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in ("sample", "hidden_states", "out_sample", "out_hidden_states"):
            assert {"frames", "height", "width"} <= set(dims(value)), dims(value)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vidcc.zoo.entry"] == name and meta["vidcc.zoo.exporter"] == exporter

    got = ort_run(exp.model_path, feeds)
    for key, want in reference.items():
        assert got[key].shape == want.shape
        assert np.abs(got[key] - want).max() <= TOL
        assert 0.1 < np.abs(want).max() < 100  # random weights, yet a non-trivial O(1) output


@pytest.mark.parametrize("name,exporter", [
    ("svd-unet", "legacy"), pytest.param("svd-unet", "dynamo", marks=pytest.mark.slow),
    pytest.param("animatediff-unet", "dynamo", marks=pytest.mark.slow), ("wan-dit", "dynamo"),
    ("moe-dit", "legacy"), ("moe-dit-trouter", "dynamo")])
def test_dynamic_frames_height_width(name, exporter):
    """The symbolic axes really are dynamic: a different video geometry still matches torch."""
    exp = zoo.export(f"{name}:tiny", exporter=exporter)
    feeds = npz(exp.inputs_path)
    video = "sample" if "sample" in feeds else "hidden_states"
    shape = list(feeds[video].shape)
    f_axis = 1 if name == "svd-unet" else 2
    shape[f_axis], shape[-2], shape[-1] = 3, 24, 32
    feeds[video] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = torch_run(name, feeds)
    got = ort_run(exp.model_path, feeds)
    for key in want:
        assert got[key].shape == want[key].shape
        assert np.abs(got[key] - want[key]).max() <= TOL


def test_wan_legacy_export_fails_clearly():
    with pytest.raises(VidccError) as info:
        zoo.export("wan-dit:tiny", exporter="legacy")
    message = str(info.value)
    assert "rms_norm" in message and "--exporter dynamo" in message and "\n" not in message


@pytest.mark.slow
def test_wan22_switches_experts_on_the_timestep_input():
    exp = zoo.export("wan22-moe:tiny")
    graph = onnx.load(str(exp.model_path)).graph
    ops = [(n.op_type, list(n.input)) for n in graph.node]
    assert ops[0] == ("Gather", ["timestep", "expert_select_index"])
    assert ops[1][0] == "GreaterOrEqual" and ops[2][0] == "If"
    boundary = next(i for i in graph.initializer if i.name == "expert_boundary")
    assert onnx.numpy_helper.to_array(boundary) == 875.0

    feeds = npz(exp.inputs_path)
    assert feeds["timestep"].tolist() == [900.0]  # the sample takes the high-noise expert
    results = {}
    for t in (900.0, 875.0, 874.0, 100.0):
        feeds["timestep"] = np.array([t], dtype=np.float32)
        got, want = ort_run(exp.model_path, feeds), torch_run("wan22-moe", feeds)
        assert np.abs(got["out_hidden_states"] - want["out_hidden_states"]).max() <= TOL
        results[t] = got["out_hidden_states"]
    # the two experts have different weights, so the branch taken shows in the output
    assert np.abs(results[875.0] - results[874.0]).max() > 1e-2


def _reaches(graph, source: str, op_type: str) -> bool:
    """Whether graph input `source` flows into a node of `op_type`."""
    reached, changed = {source}, True
    while changed:
        changed = False
        for node in graph.node:
            if set(node.input) & reached and not set(node.output) <= reached:
                reached |= set(node.output)
                changed = True
    return any(node.op_type == op_type and set(node.input) & reached for node in graph.node)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_moe_routers(exporter):
    """Router = Softmax -> TopK, dispatch = NonZero/Gather + Scatter; the t-router never sees the tokens."""
    for name, token_routed in (("moe-dit", True), ("moe-dit-trouter", False)):
        graph = onnx.load(str(zoo.export(f"{name}:tiny", exporter=exporter).model_path)).graph
        ops = {n.op_type for n in graph.node}
        assert {"Softmax", "TopK", "NonZero"} <= ops
        assert ops & {"ScatterND", "ScatterElements"}
        assert _reaches(graph, "timestep", "TopK")
        assert _reaches(graph, "hidden_states", "TopK") is token_routed


def test_cache_reuse_and_keys(tmp_path):
    first = zoo.export("moe-dit:tiny", exporter="legacy", cache_dir=tmp_path)
    assert not first.cached and first.meta["nodes"] > 100 and first.meta["params"] == 71_800
    again = zoo.export("moe-dit:tiny", exporter="legacy", cache_dir=tmp_path)
    assert again.cached and again.directory == first.directory
    other = zoo.export("moe-dit:tiny", exporter="legacy", opset=16, cache_dir=tmp_path)
    assert other.directory != first.directory and other.opset == 16
    assert not [p for p in (tmp_path / "zoo").iterdir() if p.name.startswith(".tmp-")]  # no staging leftovers


def test_failed_export_leaves_no_entry(tmp_path, monkeypatch):
    from vidcc.zoo import exporters

    def boom(*args, **kwargs):
        raise VidccError("legacy export failed: RuntimeError: boom")

    monkeypatch.setattr(exporters, "run_export", boom)
    with pytest.raises(VidccError, match="boom"):
        zoo.export("moe-dit:tiny", exporter="legacy", cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "zoo").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_exports_share_one_entry(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from vidcc import zoo; "
            "e = zoo.export('moe-dit-trouter:tiny', exporter='legacy', cache_dir=sys.argv[1]); print(e.directory)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    dirs = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(dirs) == 1
    exp = zoo.export("moe-dit-trouter:tiny", exporter="legacy", cache_dir=tmp_path)
    assert exp.cached and str(exp.directory) in dirs
    got = ort_run(exp.model_path, npz(exp.inputs_path))
    assert np.abs(got["out_hidden_states"] - npz(exp.reference_path)["out_hidden_states"]).max() <= TOL


def test_newer_opset_with_dynamo():
    exp = zoo.export("moe-dit:tiny", exporter="dynamo", opset=23)
    model = onnx.load(str(exp.model_path))
    assert model.opset_import[0].version == 23 and model.ir_version <= 11
    got = ort_run(exp.model_path, npz(exp.inputs_path))
    assert np.abs(got["out_hidden_states"] - npz(exp.reference_path)["out_hidden_states"]).max() <= TOL


def test_local_checkpoint_round_trip(tmp_path):
    """save_pretrained of the zoo's own tiny SVD, loaded back through weights=: same outputs, new cache key."""
    from vidcc.zoo import models

    built = models.build(zoo.ENTRIES["svd-unet"], "tiny")
    built.module.unet.save_pretrained(tmp_path / "ckpt" / "unet")
    random = zoo.export("svd-unet:tiny", exporter="legacy")
    local = zoo.export("svd-unet:tiny", exporter="legacy", weights=tmp_path / "ckpt")
    assert local.directory != random.directory and local.meta["weights"] == str(tmp_path / "ckpt")
    np.testing.assert_allclose(npz(local.reference_path)["out_sample"], npz(random.reference_path)["out_sample"],
                               atol=1e-4)
    got = ort_run(local.model_path, npz(local.inputs_path))
    assert np.abs(got["out_sample"] - npz(local.reference_path)["out_sample"]).max() <= TOL


def test_moe_dit_refuses_local_weights(tmp_path):
    with pytest.raises(VidccError, match="no published checkpoint"):
        zoo.export("moe-dit:tiny", weights=tmp_path)


@pytest.mark.parametrize("static", [{"frames": 3, "height": 8, "width": 12}, {"frames": 3}],
                         ids=["all", "frames"])
def test_static_export(static):
    """static= fixes the named dims at those sizes (sample inputs built there); unnamed dims stay dynamic."""
    dynamic = zoo.export("moe-dit:tiny", exporter="legacy")
    exp = zoo.export("moe-dit:tiny", exporter="legacy", static=static)
    assert exp.directory != dynamic.directory  # its own cache key
    assert exp.static == static and exp.meta["static"] == static
    model = onnx.load(str(exp.model_path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vidcc.zoo.static"] == ",".join(f"{k}={v}" for k, v in static.items())
    sizes = {"frames": 3, "height": 8, "width": 12}
    want_dims = [1, 4] + [static.get(d, d) for d in ("frames", "height", "width")]
    for value in (model.graph.input[0], model.graph.output[0]):
        assert dims(value) == want_dims, dims(value)
    feeds = npz(exp.inputs_path)
    assert list(feeds["hidden_states"].shape) == [1, 4] + [static.get(d, s) for d, s in
                                                           zip(("frames", "height", "width"), (2, 16, 16))]
    want = torch_run("moe-dit", feeds)
    got = ort_run(exp.model_path, feeds)
    reference = npz(exp.reference_path)
    for key in want:
        assert got[key].shape == want[key].shape == reference[key].shape
        assert np.abs(got[key] - want[key]).max() <= TOL
        assert np.abs(reference[key] - want[key]).max() <= TOL
    if len(static) < 3:  # height/width really are still dynamic
        feeds["hidden_states"] = np.random.default_rng(1).standard_normal(
            [1, 4, sizes["frames"], 24, 32]).astype(np.float32)
        want, got = torch_run("moe-dit", feeds), ort_run(exp.model_path, feeds)
        assert np.abs(got["out_hidden_states"] - want["out_hidden_states"]).max() <= TOL


@pytest.mark.parametrize("static,message", [
    ({"fps": 3}, "unknown static dim 'fps'; choose from frames, height, width"),
    ({"frames": 0}, "static frames must be a positive integer"),
    ({"height": -4}, "static height must be a positive integer"),
    ({"width": 2.5}, "static width must be a positive integer"),
])
def test_static_export_bad_dims_are_one_line(static, message):
    with pytest.raises(VidccError) as info:
        zoo.export("wan-dit:tiny", static=static)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_static_export_above_the_models_limit(tmp_path):
    with pytest.raises(VidccError, match=r"^static frames=64 is too large for svd-unet: at most 63$"):
        zoo.export("svd-unet:tiny", static={"frames": 64}, cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "zoo").iterdir() if not p.name.endswith(".lock")] == []

"""The zoo's catalogue and API contract, without exporting anything heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.zoo.conftest import needs_zoo
from vidcc import zoo
from vidcc.errors import VidccError

NAMES = ["svd-unet", "animatediff-unet", "wan-dit", "wan22-moe", "moe-dit", "moe-dit-trouter"]


def test_entries_are_the_cli_names():
    assert list(zoo.ENTRIES) == NAMES
    for entry in zoo.ENTRIES.values():
        assert entry.name and entry.description
        assert entry.sizes == ("tiny", "small", "full")
        assert entry.default_exporter in entry.exporters
        assert set(entry.exporters) <= {"legacy", "dynamo"}
        assert str(entry) == entry.name
    assert zoo.ENTRIES["wan-dit"].exporters == ("dynamo",)
    assert zoo.ENTRIES["svd-unet"].default_exporter == "legacy"


@pytest.mark.parametrize("spec,expected", [
    ("svd-unet", True), ("svd-unet:tiny", True), ("wan22-moe:full", True),
    ("svd-unet:huge", True),  # a known name: export() then reports the bad size
    ("model.onnx", False), ("./svd-unet", False), ("dir/svd-unet:tiny", False), ("svd-unet.onnx", False),
    ("nope", False), ("", False),
])
def test_is_zoo_name(spec, expected):
    assert zoo.is_zoo_name(spec) is expected


def test_parse_spec_defaults_and_errors():
    entry, size = zoo.parse_spec("moe-dit")
    assert (entry.name, size) == ("moe-dit", "tiny")
    with pytest.raises(VidccError, match=r"unknown zoo model 'nope'; known: svd-unet, animatediff-unet"):
        zoo.export("nope")
    with pytest.raises(VidccError, match=r"unknown size 'huge' for zoo model svd-unet; sizes: tiny, small, full"):
        zoo.export("svd-unet:huge")
    with pytest.raises(VidccError, match=r"unknown exporter 'onnx'"):
        zoo.export("svd-unet", exporter="onnx")
    with pytest.raises(VidccError, match=r"opset 17 is not supported by the dynamo exporter \(choose 18..23\)"):
        zoo.export("svd-unet", exporter="dynamo", opset=17)
    with pytest.raises(VidccError, match=r"opset 23 is not supported by the legacy exporter"):
        zoo.export("svd-unet", exporter="legacy", opset=23)


def test_missing_framework_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(VidccError, match=r"needs torch: pip install 'vidcc\[zoo\]'"):
        zoo.export("svd-unet:tiny")


def test_weights_dir_must_exist(tmp_path):
    with pytest.raises(VidccError, match="does not exist"):
        zoo.export("svd-unet:tiny", weights=tmp_path / "missing")


def test_import_does_not_load_torch():
    code = "import sys, vidcc.zoo, vidcc.cli.zoo; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_sidecar_paths():
    inputs, reference = zoo.sidecar_paths("out/svd.onnx")
    assert (str(inputs), str(reference)) == ("out/svd.inputs.npz", "out/svd.reference.npz")


def test_cache_root_precedence(monkeypatch, tmp_path):
    from vidcc.zoo.cache import cache_root

    monkeypatch.delenv("VIDCC_ZOO_CACHE_DIR", raising=False)
    monkeypatch.setenv("VIDCC_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "zoo"
    monkeypatch.setenv("VIDCC_ZOO_CACHE_DIR", str(tmp_path / "z"))
    assert cache_root() == tmp_path / "z"
    assert cache_root(tmp_path / "x") == tmp_path / "x" / "zoo"
    monkeypatch.delenv("VIDCC_ZOO_CACHE_DIR")
    monkeypatch.delenv("VIDCC_CACHE_DIR")
    assert cache_root().parts[-3:] == (".cache", "vidcc", "zoo")


@needs_zoo
@pytest.mark.parametrize("name", NAMES)
def test_listed_params_match_the_built_models(name):
    """`zoo list` shows parameter counts from the catalogue; they must be what the configs build."""
    from vidcc.zoo.models import count_params

    entry = zoo.ENTRIES[name]
    assert {s: count_params(entry, s) for s in entry.sizes} == entry.params

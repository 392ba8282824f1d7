"""Zoo test fixtures: one export cache for the session, persistent across runs.

Exports are cached under pytest's own cache directory (`.pytest_cache/d/vidcc-zoo`, git-ignored), keyed by
entry, exporter, opset and library versions, so a rerun reuses them and a version change re-exports.
`VIDCC_ZOO_CACHE_DIR`, if already set (e.g. by a top-level conftest), wins.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_ZOO_DEPS = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "onnxscript"))
needs_zoo = pytest.mark.skipif(not HAVE_ZOO_DEPS, reason="needs the zoo extra: pip install 'vidcc[zoo]'")


@pytest.fixture(scope="session", autouse=True)
def zoo_cache_dir(request, tmp_path_factory):
    preset = os.environ.get("VIDCC_ZOO_CACHE_DIR")
    if preset:
        yield preset
        return
    cache = request.config.cache
    path = cache.mkdir("vidcc-zoo") if cache is not None else tmp_path_factory.mktemp("vidcc-zoo")
    os.environ["VIDCC_ZOO_CACHE_DIR"] = str(path)
    try:
        yield str(path)
    finally:
        os.environ.pop("VIDCC_ZOO_CACHE_DIR", None)

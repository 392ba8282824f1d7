"""The model zoo: real video-diffusion architectures exported to ONNX with deterministic weights.

    from vidcc import zoo
    exp = zoo.export("svd-unet:tiny")            # cached; exporter/opset default per entry
    exp.model_path, exp.inputs_path, exp.reference_path

A spec is `NAME[:SIZE]` (size defaults to tiny). Exports are cached under `$VIDCC_CACHE_DIR/zoo/<key>/`
(default `~/.cache/vidcc/zoo/`), the key covering entry, size, exporter, opset, the torch / diffusers /
onnx / onnxscript versions, ZOO_VERSION and any local checkpoint. Importing this package is cheap:
torch and diffusers load only when an export is actually built.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vidcc.errors import VidccError
from vidcc.zoo import cache
from vidcc.zoo.entries import DEFAULT_OPSET, ENTRIES, EXPORTERS, OPSETS, SIZES, Entry

__all__ = ["ENTRIES", "SIZES", "EXPORTERS", "Entry", "ZooExport", "is_zoo_name", "parse_spec", "export",
           "copy_export", "sidecar_paths", "WEIGHTS_ENV"]

DEFAULT_SIZE = "tiny"
WEIGHTS_ENV = "VIDCC_ZOO_WEIGHTS"
INSTALL_HINT = "pip install 'vidcc[zoo]'"


@dataclass(frozen=True)
class ZooExport:
    entry: Entry
    size: str
    exporter: str
    opset: int
    directory: Path
    cached: bool = False  # True when this call found the export already in the cache
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def spec(self) -> str:
        return f"{self.entry.name}:{self.size}"

    @property
    def model_path(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def data_path(self) -> Path | None:
        """The external-data file (full sizes), or None when the weights are inside model.onnx."""
        path = self.directory / "model.onnx.data"
        return path if path.exists() else None

    @property
    def inputs_path(self) -> Path:
        return self.directory / "inputs.npz"

    @property
    def reference_path(self) -> Path:
        return self.directory / "reference.npz"


def parse_spec(spec: str) -> tuple[Entry, str]:
    """`NAME[:SIZE]` -> (entry, size). Unknown names or sizes raise VidccError listing the known ones."""
    name, _, size = spec.partition(":")
    entry = ENTRIES.get(name)
    if entry is None:
        raise VidccError(f"unknown zoo model {name!r}; known: {', '.join(ENTRIES)}")
    size = size or DEFAULT_SIZE
    if size not in entry.sizes:
        raise VidccError(f"unknown size {size!r} for zoo model {name}; sizes: {', '.join(entry.sizes)}")
    return entry, size


def is_zoo_name(spec: str) -> bool:
    """True for `NAME` or `NAME:ANYTHING` with a known NAME (a bad size then errors in export);
    False for paths and unknown names, so callers can treat those as files."""
    if not isinstance(spec, str) or os.sep in spec or "/" in spec or spec.endswith(".onnx"):
        return False
    return spec.partition(":")[0] in ENTRIES


def _require(entry: Entry, exporter: str) -> None:
    needed = ["torch"] + (["diffusers"] if entry.family != "moe" else []) + \
        (["onnxscript"] if exporter == "dynamo" else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise VidccError(f"the model zoo needs {', '.join(missing)}: {INSTALL_HINT}")


def _resolve_weights(weights) -> Path | None:
    weights = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_dir():
        raise VidccError(f"zoo weights directory {path} does not exist")
    return path


def export(spec: str, exporter: str | None = None, opset: int | None = None, cache_dir=None,
           progress: Callable[[str], None] | None = None, weights: str | os.PathLike | None = None,
           force: bool = False) -> ZooExport:
    """Export a zoo model (or return the cached export).

    exporter: "legacy" (TorchScript, opset 17) or "dynamo" (torch.export, opset 18..23); default per
    entry (dynamo for wan-*). weights: a local diffusers checkpoint directory (or $VIDCC_ZOO_WEIGHTS)
    loaded with from_pretrained instead of random weights. progress: called with a line per stage.
    force: rebuild even when cached.
    """
    entry, size = parse_spec(spec)
    exporter = exporter or entry.default_exporter
    if exporter not in EXPORTERS:
        raise VidccError(f"unknown exporter {exporter!r}; choose {' or '.join(EXPORTERS)}")
    opset = opset if opset is not None else DEFAULT_OPSET[exporter]
    if opset not in OPSETS[exporter]:
        allowed = OPSETS[exporter]
        raise VidccError(f"opset {opset} is not supported by the {exporter} exporter "
                         f"(choose {allowed.start}..{allowed.stop - 1})")
    weights_dir = _resolve_weights(weights)
    _require(entry, exporter)
    say = progress or (lambda _msg: None)

    root = cache.cache_root(cache_dir)
    key = cache.cache_key(entry=entry.name, size=size, exporter=exporter, opset=opset,
                          versions=cache.library_versions(),
                          weights=cache.weights_fingerprint(weights_dir) if weights_dir else None)
    final = root / key
    if not force and cache.is_complete(final):
        return ZooExport(entry, size, exporter, opset, final, cached=True, meta=cache.read_meta(final))

    with cache.locked(root, key):
        if not force and cache.is_complete(final):  # another process finished it while we waited
            return ZooExport(entry, size, exporter, opset, final, cached=True, meta=cache.read_meta(final))
        with cache.staging(root, key) as tmp:
            meta = _build_into(tmp, entry, size, exporter, opset, weights_dir, say)
            if force and final.exists():
                shutil.rmtree(final)
            cache.publish(tmp, final)
    return ZooExport(entry, size, exporter, opset, final, cached=False, meta=meta)


def _build_into(tmp: Path, entry: Entry, size: str, exporter: str, opset: int, weights: Path | None,
                say: Callable[[str], None]) -> dict:
    import numpy as np
    import torch

    from vidcc.zoo import exporters
    from vidcc.zoo import models
    from vidcc.zoo.graph import finalize

    spec = f"{entry.name}:{size}"
    external = size == "full"
    timings = {}

    start = time.perf_counter()
    say(f"building {spec} in torch" + (f" from {weights}" if weights else " (deterministic random weights)"))
    with torch.no_grad():
        built = models.build(entry, size, weights)
        params = sum(p.numel() for p in built.module.parameters())
        timings["build_s"] = time.perf_counter() - start

        start = time.perf_counter()
        say(f"running the torch reference for {spec}")
        outputs = built.module(*built.inputs.values())
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        reference = {name: out.detach().numpy() for name, out in zip(built.output_names, outputs)}
        timings["reference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"exporting {spec} with the {exporter} exporter (opset {opset})")
    with exporters.scratch_dir(tmp) as raw_dir:
        raw = Path(raw_dir) / "model.onnx"
        exporters.run_export(built, exporter, opset, raw, external=external, family=entry.family,
                             extra=entry.extra)
        timings["export_s"] = time.perf_counter() - start
        built.module, built.experts = None, {}  # free the torch weights before onnx loads its copy
        gc.collect()
        say(f"writing {spec}")
        info = dict(entry=entry.name, size=size, exporter=exporter, opset=opset,
                    zoo_version=cache.ZOO_VERSION, weights=str(weights) if weights else "random")
        summary = exporters.save_final(raw, tmp / "model.onnx", external=external,
                                       tweak=lambda m: finalize(m, built, reference, info))
    inputs = {name: t.detach().numpy() for name, t in built.inputs.items()}
    np.savez(tmp / "inputs.npz", **inputs)
    np.savez(tmp / "reference.npz", **reference)
    del built
    meta = {
        **info, "versions": cache.library_versions(), "params": params, "timings": timings,
        "external_data": external, **summary,
        "inputs": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in inputs.items()},
        "outputs": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in reference.items()},
    }
    cache.write_meta(tmp, meta)
    return meta


def sidecar_paths(model_path: str | os.PathLike) -> tuple[Path, Path]:
    """Where `vidcc zoo export -o X.onnx` puts the sample inputs and reference: X.inputs.npz, X.reference.npz."""
    path = Path(model_path)
    stem = path.with_suffix("") if path.suffix == ".onnx" else path
    return stem.with_name(stem.name + ".inputs.npz"), stem.with_name(stem.name + ".reference.npz")


def copy_export(exp: ZooExport, dest: str | os.PathLike) -> dict[str, Path]:
    """Copy an export to `dest` (X.onnx) with X.inputs.npz / X.reference.npz beside it.

    External data is copied byte for byte to X.onnx.data; only its `location` field in X.onnx is
    rewritten to the new file name. Returns the written paths by role.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = {"model": dest}
    if exp.data_path is None:
        shutil.copyfile(exp.model_path, dest)
    else:
        import onnx

        model = onnx.load(str(exp.model_path), load_external_data=False)
        new_location = dest.name + ".data"
        for tensor in _all_tensors(model.graph):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = new_location
        onnx.save_model(model, str(dest))
        written["data"] = dest.with_name(new_location)
        shutil.copyfile(exp.data_path, written["data"])
    written["inputs"], written["reference"] = sidecar_paths(dest)
    shutil.copyfile(exp.inputs_path, written["inputs"])
    shutil.copyfile(exp.reference_path, written["reference"])
    return written


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)

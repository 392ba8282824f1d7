"""The model zoo: real video-diffusion architectures exported to ONNX with deterministic weights.

    from vidcc import zoo
    exp = zoo.export("svd-unet:tiny")            # cached; exporter/opset default per entry
    exp.model_path, exp.inputs_path, exp.reference_path

A spec is `NAME[:SIZE]` (size defaults to tiny). The video input/output's latent frames/height/width are
dynamic axes; `zoo.export(spec, static={"frames": 5, "height": 60, "width": 104})` fixes the named ones
at those sizes instead (sample inputs built there, the axes static in the graph; unnamed dims stay
dynamic): for torch versions whose torch.export cannot trace a model with a dim dynamic. Exports are
cached under `$VIDCC_CACHE_DIR/zoo/<key>/` (default `~/.cache/vidcc/zoo/`), the key covering entry, size,
exporter, opset, static dims, the torch / diffusers / onnx / onnxscript versions, ZOO_VERSION and any
local checkpoint. Importing this package is cheap: torch and diffusers load only when an export is
actually built.
"""

from __future__ import annotations

import gc
import importlib.util
import numbers
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vidcc.errors import VidccError
from vidcc.zoo import cache
from vidcc.zoo.entries import DEFAULT_OPSET, ENTRIES, EXPORTERS, OPSETS, SIZES, VIDEO_DIMS, Entry

__all__ = ["ENTRIES", "SIZES", "EXPORTERS", "VIDEO_DIMS", "Entry", "ZooExport", "is_zoo_name", "parse_spec",
           "parse_static", "check_static", "export", "copy_export", "sidecar_paths", "WEIGHTS_ENV"]

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
    static: dict = field(default_factory=dict, compare=False)  # dims fixed at export: {"frames": 5, ...}

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


def check_static(static) -> dict[str, int]:
    """Validate `static` ({dim: size}, dims from VIDEO_DIMS) and return it in VIDEO_DIMS order ({} for None)."""
    if static is None:
        return {}
    if not isinstance(static, dict):
        raise VidccError(f"static must be a dict of dim -> size (e.g. {{'frames': 5}}), not {type(static).__name__}")
    unknown = [str(k) for k in static if k not in VIDEO_DIMS]
    if unknown:
        raise VidccError(f"unknown static dim {', '.join(map(repr, unknown))}; choose from {', '.join(VIDEO_DIMS)}")
    for dim, value in static.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise VidccError(f"static {dim} must be a positive integer (a latent size), not {value!r}")
    return {dim: int(static[dim]) for dim in VIDEO_DIMS if dim in static}


def parse_static(text: str | None) -> dict[str, int]:
    """`frames=5,height=60,width=104` -> {"frames": 5, "height": 60, "width": 104} (validated; "" -> {})."""
    static: dict = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        dim, eq, value = item.partition("=")
        dim, value = dim.strip(), value.strip()
        if not eq or not dim:
            raise VidccError(f"bad static dim {item!r}: write DIM=SIZE, e.g. frames=5,height=60,width=104")
        try:
            static[dim] = int(value)
        except ValueError:
            raise VidccError(f"static {dim} must be a positive integer (a latent size), not {value!r}") from None
    return check_static(static)


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
           force: bool = False, static: dict[str, int] | None = None) -> ZooExport:
    """Export a zoo model (or return the cached export).

    exporter: "legacy" (TorchScript, opset 17) or "dynamo" (torch.export, opset 18..23); default per
    entry (dynamo for wan-*). weights: a local diffusers checkpoint directory (or $VIDCC_ZOO_WEIGHTS)
    loaded with from_pretrained instead of random weights. progress: called with a line per stage.
    force: rebuild even when cached. static: {dim: size} for dims among VIDEO_DIMS (latent frames,
    height, width) to export fixed at that size: the sample inputs (inputs_path) and the reference are
    built at it and the graph's axis is static; dims not named stay dynamic. A static export has its own
    cache entry and records the dims in meta["static"] and the model's `vidcc.zoo.static` metadata.
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
    static = check_static(static)
    weights_dir = _resolve_weights(weights)
    _require(entry, exporter)
    say = progress or (lambda _msg: None)

    root = cache.cache_root(cache_dir)
    # static joins the key only when set, so the keys (and caches) of dynamic exports stay as they were
    key = cache.cache_key(entry=entry.name, size=size, exporter=exporter, opset=opset,
                          versions=cache.library_versions(),
                          weights=cache.weights_fingerprint(weights_dir) if weights_dir else None,
                          **({"static": static} if static else {}))
    final = root / key
    if not force and cache.is_complete(final):
        return ZooExport(entry, size, exporter, opset, final, cached=True, meta=cache.read_meta(final),
                         static=static)

    with cache.locked(root, key):
        if not force and cache.is_complete(final):  # another process finished it while we waited
            return ZooExport(entry, size, exporter, opset, final, cached=True, meta=cache.read_meta(final),
                             static=static)
        with cache.staging(root, key) as tmp:
            meta = _build_into(tmp, entry, size, exporter, opset, weights_dir, say, static)
            if force and final.exists():
                shutil.rmtree(final)
            cache.publish(tmp, final)
    return ZooExport(entry, size, exporter, opset, final, cached=False, meta=meta, static=static)


def _format_static(static: dict[str, int]) -> str:
    return ",".join(f"{dim}={value}" for dim, value in static.items())


def _build_into(tmp: Path, entry: Entry, size: str, exporter: str, opset: int, weights: Path | None,
                say: Callable[[str], None], static: dict[str, int] | None = None) -> dict:
    import numpy as np
    import torch

    from vidcc.zoo import exporters
    from vidcc.zoo import models
    from vidcc.zoo.graph import finalize

    spec = f"{entry.name}:{size}" + (f" ({_format_static(static)} static)" if static else "")
    external = size == "full"
    timings = {}

    start = time.perf_counter()
    say(f"building {spec} in torch" + (f" from {weights}" if weights else " (deterministic random weights)"))
    with torch.no_grad():
        built = models.build(entry, size, weights, static)
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
        if static:
            info["static"] = _format_static(static)  # metadata_props value: "frames=5,height=60,width=104"
        summary = exporters.save_final(raw, tmp / "model.onnx", external=external,
                                       tweak=lambda m: finalize(m, built, reference, info))
    inputs = {name: t.detach().numpy() for name, t in built.inputs.items()}
    np.savez(tmp / "inputs.npz", **inputs)
    np.savez(tmp / "reference.npz", **reference)
    del built
    meta = {
        **info, "static": dict(static or {}), "versions": cache.library_versions(), "params": params,
        "timings": timings, "external_data": external, **summary,
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

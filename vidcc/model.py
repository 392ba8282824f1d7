"""Resolving a MODEL argument: a path to an .onnx file, or a zoo name like `svd-unet:tiny`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcc.errors import ModelError, VidccError


@dataclass
class ModelSource:
    spec: str  # what the user wrote
    path: Path
    inputs_path: Path | None = None  # sample inputs (.npz), when known

    def sample_inputs(self) -> dict[str, np.ndarray] | None:
        if self.inputs_path is None or not self.inputs_path.is_file():
            return None
        with np.load(self.inputs_path) as data:
            return {k: data[k] for k in data.files}


def resolve(spec: str, *, exporter: str | None = None) -> ModelSource:
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise ModelError(f"'{spec}' is a directory, not an ONNX file")
        for candidate in (path.with_suffix(".inputs.npz"), path.parent / "inputs.npz"):
            if candidate.is_file():
                return ModelSource(spec, path, candidate)
        return ModelSource(spec, path)
    if spec.endswith(".onnx") or "/" in spec or "\\" in spec:
        raise ModelError(f"model file '{spec}' not found")
    from vidcc import zoo

    if zoo.is_zoo_name(spec):
        export = zoo.export(spec, exporter=exporter)
        return ModelSource(spec, Path(export.model_path), Path(export.inputs_path))
    raise VidccError(f"'{spec}' is neither a model file nor a zoo model (see `vidcc zoo list`)")


def load(spec: str, **kw):
    """Resolve and load into the IR: (graph, source)."""
    from vidcc import onnx_io

    source = resolve(spec, **kw)
    return onnx_io.load(source.path), source

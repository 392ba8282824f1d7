"""torch -> ONNX for zoo modules: the legacy TorchScript exporter and the dynamo (torch.export) exporter.

Both write one `model.onnx` (plus `model.onnx.data` when external) whose inputs are named as the
`Built.inputs` keys, whose outputs are `Built.output_names`, and whose frames/height/width axes are
symbolic with those names. Imports torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx
import torch

from vidcc.errors import VidccError
from vidcc.zoo.models import Built

# onnxscript's SlicesSplit rewrite matches a two-output pattern by trying every pair of Slice nodes:
# quadratic, ~100 s of the optimizer's ~110 s on tiny SVD. Everything else of torch's default runs.
_SKIPPED_REWRITES = {"SlicesSplit"}


def export_legacy(built: Built, path: Path, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(
            built.module, tuple(built.inputs.values()), str(path), dynamo=False, opset_version=opset,
            input_names=list(built.inputs), output_names=built.output_names, dynamic_axes=dict(built.dynamic),
            do_constant_folding=True,
        )


def dynamo_program(module: torch.nn.Module, built: Built, opset: int):
    """torch.export + translation + onnxscript's optimizer (minus the quadratic rewrite)."""
    from torch.export import Dim

    names = list(built.inputs)
    dims: dict[str, Dim] = {}
    shapes = {}
    for name in names:
        axes = built.dynamic.get(name)
        if not axes:
            shapes[name] = None
            continue
        shapes[name] = {}
        for axis, dim in axes.items():
            if dim not in dims:
                dims[dim] = Dim(dim, max=built.dim_max[dim]) if dim in built.dim_max else Dim(dim)
            shapes[name][axis] = dims[dim]
    with torch.no_grad():
        program = torch.onnx.export(
            module, tuple(built.inputs.values()), dynamo=True, opset_version=opset, input_names=names,
            output_names=built.output_names, dynamic_shapes=shapes, optimize=False, verbose=False,
        )
    optimize(program.model)
    return program


def optimize(model) -> None:
    """torch's default ONNXProgram.optimize(), without the rewrites listed in _SKIPPED_REWRITES."""
    import onnxscript.optimizer
    import onnxscript.rewriter as rewriter
    import onnxscript.rewriter.onnx_fusions

    default_rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    try:
        if default_rules is not None:
            rewriter._DEFAULT_REWRITE_RULES = tuple(
                r for r in default_rules if getattr(r, "name", None) not in _SKIPPED_REWRITES)
        onnxscript.optimizer.optimize_ir(model)
    finally:
        if default_rules is not None:
            rewriter._DEFAULT_REWRITE_RULES = default_rules
    onnxscript.rewriter.onnx_fusions.fuse(model)


def export_dynamo(built: Built, path: Path, opset: int, external: bool) -> None:
    program = dynamo_program(built.module, built, opset)
    program.save(str(path), external_data=external)


def export_wan22(built: Built, path: Path, opset: int, boundary_timestep: float, external: bool) -> None:
    from vidcc.zoo.compose import if_of_experts

    graphs = {}
    for name, expert in built.experts.items():
        program = dynamo_program(expert, built, opset)
        graphs[name] = program.model  # onnx_ir model; weights stay torch-backed until serialised
    protos = {name: _ir_to_proto(model) for name, model in graphs.items()}
    model = if_of_experts(protos["high_noise"], protos["low_noise"], "timestep", boundary_timestep,
                          then_name="high_noise", else_name="low_noise")
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def _ir_to_proto(model) -> onnx.ModelProto:
    import onnx_ir as ir

    return ir.serde.serialize_model(model)


def run_export(built: Built, exporter: str, opset: int, path: Path, *, external: bool, family: str,
               extra: dict) -> None:
    """Export into `path`; raise VidccError with the reason when the exporter cannot do it."""
    try:
        if exporter == "legacy":
            with _quiet(), _native_output_silenced():
                export_legacy(built, path, opset)
        elif family == "wan22":
            boundary = extra["boundary"] * extra["num_train_timesteps"]
            with _quiet():
                export_wan22(built, path, opset, boundary, external)
        else:
            with _quiet():
                export_dynamo(built, path, opset, external)
    except VidccError:
        raise
    except Exception as exc:
        text = str(exc)
        if exporter == "legacy" and "rms_norm" in text and "legacy_error" in extra:
            raise VidccError(extra["legacy_error"]) from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise VidccError(f"{exporter} export failed: {type(exc).__name__}: {first}") from exc


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and progress prints; errors still propagate."""
    import io
    import logging
    import warnings

    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def _native_output_silenced():
    """The legacy exporter leaves torch's C++ ONNX log switched on (its setup_onnx_logging tests a function
    object for truth) and prints the whole TorchScript graph from C++ on failure; keep that off the
    terminal by pointing fds 1 and 2 at /dev/null meanwhile."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "wb") as devnull:
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        for copy in saved.values():
            os.close(copy)
        torch._C._jit_set_onnx_log_enabled(False)


def save_final(src: Path, dst: Path, *, external: bool, tweak: Callable[[onnx.ModelProto], dict]) -> dict:
    """Load the raw export, apply `tweak`, and write `dst` (with one `dst.name + '.data'` if external).
    Returns what `tweak` returned."""
    model = onnx.load(str(src), load_external_data=True)
    summary = tweak(model)
    if external:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
    return summary


def scratch_dir(parent: Path):
    return tempfile.TemporaryDirectory(prefix=".raw-", dir=parent)

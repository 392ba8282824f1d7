"""vidcc's built-in targets, a plugin like any other. Each module of this package lists its Target
instances in TARGETS; backends (onnxruntime, tvm, tensorrt) are imported lazily inside them."""

from __future__ import annotations

import importlib
import pkgutil

from vidcc.hookspecs import hookimpl


@hookimpl
def vidcc_register_targets(register):
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            for target in getattr(importlib.import_module(f"{__name__}.{info.name}"), "TARGETS", ()):
                register(target)

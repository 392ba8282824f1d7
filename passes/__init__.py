"""vidcc's built-in passes, a plugin like any other. Each module of this package lists its pass
classes in PASSES and may name pipelines in PIPELINES = [(name, spec, description)]."""

from __future__ import annotations

import importlib
import pkgutil

from vidcc.hookspecs import hookimpl


def _modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


@hookimpl
def vidcc_register_passes(register):
    for module in _modules():
        for pass_cls in getattr(module, "PASSES", ()):
            register(pass_cls)


@hookimpl
def vidcc_register_pipelines(register):
    for module in _modules():
        for name, spec, description in getattr(module, "PIPELINES", ()):
            register(name, spec, description)

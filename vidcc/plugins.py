"""Plugin loading (pluggy) and the registry of what plugins provide.

Plugins come from the `vidcc` entry-point group; built-ins are entry points of vidcc itself.
VIDCC_DISABLE_PLUGINS=a,b skips plugins by entry-point name; VIDCC_TRACE_PLUGINS=1 traces hook calls.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from vidcc import hookspecs
from vidcc.errors import PluginError

GROUP = "vidcc"


@dataclass
class Registered:
    name: str
    obj: Any
    plugin: str
    description: str = ""


@dataclass
class Registry:
    passes: dict[str, Registered] = field(default_factory=dict)
    targets: dict[str, Registered] = field(default_factory=dict)
    pipelines: dict[str, Registered] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # plugin name -> why it was skipped

    def add(self, kind: str, name: str, obj: Any, plugin: str, description: str = "") -> None:
        table = getattr(self, kind)
        # passes and pipelines share one namespace: both are names in a pipeline spec
        clash = table.get(name) or (self.pipelines.get(name) if kind == "passes" else
                                    self.passes.get(name) if kind == "pipelines" else None)
        if clash is not None:
            raise PluginError(f"{kind[:-1]} name '{name}' is registered twice: by plugin '{clash.plugin}' and by plugin '{plugin}'")
        table[name] = Registered(name, obj, plugin, description)

    def plugin_of(self, pass_cls) -> str:
        for r in self.passes.values():
            if r.obj is pass_cls:
                return r.plugin
        return "?"


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_extra: list[tuple[str, Any]] = []


def plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        failures: dict[str, str] = {}
        disabled = {n.strip() for n in os.environ.get("VIDCC_DISABLE_PLUGINS", "").split(",") if n.strip()}
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in disabled or pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin is reported and skipped, never fatal
                failures[ep.name] = f"{type(exc).__name__}: {exc}"
        for name, obj in _extra:
            pm.register(obj, name=name)
        if os.environ.get("VIDCC_TRACE_PLUGINS"):
            pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            pm.enable_tracing()
        pm.vidcc_failures = failures
        _pm = pm
    return _pm


def registry() -> Registry:
    """What all loaded plugins registered. Each hook implementation is called on its own so a
    duplicate name can be traced to both plugins."""
    global _registry
    if _registry is None:
        pm = plugin_manager()
        reg = Registry(failures=dict(pm.vidcc_failures))
        for hook_name, kind in (("vidcc_register_passes", "passes"), ("vidcc_register_targets", "targets"),
                                ("vidcc_register_pipelines", "pipelines"), ("vidcc_register_commands", "commands")):
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                if os.environ.get("VIDCC_TRACE_PLUGINS"):
                    sys.stderr.write(f"vidcc: {hook_name} [plugin {plugin}]\n")
                try:
                    impl.function(register=_registrar(reg, kind, plugin))
                except PluginError:
                    raise
                except Exception as exc:
                    reg.failures[plugin] = f"{hook_name} failed: {type(exc).__name__}: {exc}"
        _registry = reg
    return _registry


def _registrar(reg: Registry, kind: str, plugin: str):
    if kind == "passes":
        def register(pass_cls):
            reg.add("passes", pass_cls.name, pass_cls, plugin, _first_line(pass_cls.__doc__))
    elif kind == "targets":
        def register(target):
            reg.add("targets", target.name, target, plugin, getattr(target, "description", ""))
    elif kind == "pipelines":
        def register(name, spec, description=""):
            reg.add("pipelines", name, spec, plugin, description)
    else:
        def register(command):
            if command.name in reg.commands:
                raise PluginError(f"command '{command.name}' is registered twice: by plugin "
                                  f"'{reg.commands[command.name].plugin}' and by plugin '{plugin}'")
            command.plugin = plugin
            reg.commands[command.name] = command
    return register


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def hook():
    return plugin_manager().hook


def reset(extra: list[tuple[str, Any]] | None = None) -> None:
    """Forget loaded plugins (tests); `extra` registers (name, plugin object) pairs besides entry points."""
    global _pm, _registry, _extra
    _pm, _registry, _extra = None, None, list(extra or [])

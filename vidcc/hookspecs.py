"""Every vidcc hook. A plugin is a module or object with `@hookimpl` functions named like these,
found through the `vidcc` entry-point group. Built-in passes and targets use the same hooks."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("vidcc")
hookimpl = pluggy.HookimplMarker("vidcc")


@hookspec
def vidcc_register_passes(register):
    """Call `register(PassClass)` for each pass class the plugin provides."""


@hookspec
def vidcc_register_targets(register):
    """Call `register(target)` for each Target instance the plugin provides."""


@hookspec
def vidcc_register_pipelines(register):
    """Call `register(name, spec, description)` to name a pipeline spec, e.g. ("cleanup", "dce,cse", "...")."""


@hookspec
def vidcc_register_commands(register):
    """Call `register(command)` for each CLI command: an object with `name` and `add_parser(subparsers)`,
    where add_parser sets `func=run` as the parser default."""


@hookspec
def vidcc_before_pass(pass_, graph, ctx):
    """Called before each pass runs (observation only; must not change the graph)."""


@hookspec
def vidcc_after_pass(pass_, graph, ctx, result):
    """Called after each pass that succeeded, with its PassResult."""


@hookspec
def vidcc_after_compile(artifact, ctx):
    """Called after a target built and verified an artifact."""

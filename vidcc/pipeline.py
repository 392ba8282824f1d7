"""Pipeline spec strings, the same on the CLI and in Python:

    cleanup,fuse-groupnorm,prune-channels{ratio=0.3,criterion=l1},tag-precision{exclude=[Softmax,Pow]}

Names are passes or registered pipelines (which expand to their own spec). Option values are typed by
the pass's dataclass fields; quote a value ("...") to use , { } [ ] = in it; lists are [a,b].
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any

from vidcc.errors import SpecError


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict[str, Any]  # raw strings, or lists of strings


def parse_spec(spec: str) -> list[PassSpec]:
    """Split a spec string into pass names and raw options. Syntax errors say where."""
    items: list[PassSpec] = []
    i, n = 0, len(spec)

    def fail(msg: str):
        raise SpecError(f"pipeline spec {spec!r}: {msg} at position {i}")

    def skip_ws():
        nonlocal i
        while i < n and spec[i].isspace():
            i += 1

    def read_value():
        nonlocal i
        skip_ws()
        if i < n and spec[i] in "\"'":
            quote = spec[i]
            end = spec.find(quote, i + 1)
            if end < 0:
                fail("unterminated quote")
            value = spec[i + 1:end]
            i = end + 1
            return value
        if i < n and spec[i] == "[":
            i += 1
            values = []
            skip_ws()
            if i < n and spec[i] == "]":
                i += 1
                return values
            while True:
                values.append(read_value())
                skip_ws()
                if i < n and spec[i] == ",":
                    i += 1
                elif i < n and spec[i] == "]":
                    i += 1
                    return values
                else:
                    fail("expected ',' or ']' in a list")
        start = i
        while i < n and spec[i] not in ",{}[]=":
            i += 1
        return spec[start:i].strip()

    while True:
        skip_ws()
        if i >= n:
            break
        start = i
        while i < n and spec[i] not in ",{}[]=\"'" and not spec[i].isspace():
            i += 1
        name = spec[start:i]
        if not name:
            fail("expected a pass name")
        options: dict[str, Any] = {}
        skip_ws()
        if i < n and spec[i] == "{":
            i += 1
            skip_ws()
            while i < n and spec[i] != "}":
                kstart = i
                while i < n and spec[i] not in "=,}":
                    i += 1
                key = spec[kstart:i].strip()
                if i >= n or spec[i] != "=" or not key:
                    fail(f"expected key=value in the options of '{name}'")
                i += 1
                if key in options:
                    fail(f"option '{key}' of '{name}' given twice")
                options[key] = read_value()
                skip_ws()
                if i < n and spec[i] == ",":
                    i += 1
                    skip_ws()
                elif i < n and spec[i] != "}":
                    fail(f"expected ',' or '}}' in the options of '{name}'")
            if i >= n:
                fail(f"missing '}}' after the options of '{name}'")
            i += 1
        items.append(PassSpec(name, options))
        skip_ws()
        if i < n:
            if spec[i] != ",":
                fail("expected ','")
            i += 1
    return items


def build_pipeline(spec: str, *, _depth: int = 0) -> list:
    """Resolve a spec string into pass instances using the plugin registry."""
    from vidcc import plugins

    reg = plugins.registry()
    passes = []
    for item in parse_spec(spec):
        if item.name in reg.pipelines:
            if item.options:
                raise SpecError(f"pipeline '{item.name}' takes no options; give them to its passes")
            if _depth > 8:
                raise SpecError(f"pipeline '{item.name}' expands into itself")
            passes.extend(build_pipeline(reg.pipelines[item.name].obj, _depth=_depth + 1))
            continue
        entry = reg.passes.get(item.name)
        if entry is None:
            known = sorted(reg.passes) + sorted(reg.pipelines)
            close = difflib.get_close_matches(item.name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
            raise SpecError(f"unknown pass '{item.name}'{hint}")
        passes.append(instantiate(entry.obj, item.options))
    return passes


def instantiate(pass_cls, options: dict[str, Any]):
    """Create a pass from raw option strings, converting each to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(pass_cls)} if dataclasses.is_dataclass(pass_cls) else {}
    hints = typing.get_type_hints(pass_cls) if fields else {}
    kwargs = {}
    for key, raw in options.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise SpecError(f"pass '{pass_cls.name}' has no option '{key}' (options: {known})")
        try:
            kwargs[key] = convert(raw, hints.get(key, str))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"pass '{pass_cls.name}' option '{key}': {exc}") from None
    try:
        return pass_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"pass '{pass_cls.name}': {exc}") from None


def convert(raw: Any, tp) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        non_none = [a for a in args if a is not type(None)]
        if raw in ("none", "None", "") and type(None) in args:
            return None
        return convert(raw, non_none[0])
    if origin is typing.Literal:
        choices = [str(a) for a in args]
        if str(raw) not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return args[choices.index(str(raw))]
    if origin in (list, tuple) or tp in (list, tuple):
        items = raw if isinstance(raw, list) else ([] if raw == "" else [raw])
        inner = args[0] if args else str
        values = [convert(x, inner) for x in items]
        return tuple(values) if (origin or tp) is tuple else values
    if isinstance(raw, list):
        raise ValueError(f"expected one value, got a list {raw!r}")
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    return raw

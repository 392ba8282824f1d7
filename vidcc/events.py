"""One readable line per pass detail. Passes from any plugin emit details (dicts with a `kind`); the
known kinds get a sentence, anything else is shown as `key=value` pairs so nothing is hidden."""

from __future__ import annotations

from typing import Any

KNOWN_KINDS = ("fused", "refused", "removed", "pruned", "routed", "precision")


def kind_of(d: Any) -> str:
    return str(d.get("kind", "other")) if isinstance(d, dict) else "other"


def group(details: list[Any]) -> dict[str, list[Any]]:
    """Details by kind: known kinds first (in KNOWN_KINDS order), then the rest alphabetically."""
    groups: dict[str, list[Any]] = {}
    for d in details:
        groups.setdefault(kind_of(d), []).append(d)
    order = [k for k in KNOWN_KINDS if k in groups] + sorted(k for k in groups if k not in KNOWN_KINDS)
    return {k: groups[k] for k in order}


def describe(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    kind = d.get("kind")
    rest = {k: v for k, v in d.items() if k != "kind"}
    where = rest.pop("node", None) or rest.pop("layer", None)
    if kind == "fused":
        head = f"{rest.pop('pattern', '?')} at {where}"
    elif kind == "refused":
        head = f"{rest.pop('pattern', '?')} at {where}: {rest.pop('reason', 'no reason given')}"
    elif kind == "pruned":
        kept, total, chans = rest.pop("kept", None), rest.pop("total", None), rest.pop("channels", None)
        count = f"{kept}/{total} channels kept" if kept is not None and total is not None else \
            f"channels {short(chans)}" if chans is not None else ""
        head = f"{where}: {count}" if count else str(where)
    elif kind == "routed":
        choice = next((rest.pop(k) for k in ("expert", "route", "decision") if k in rest), None)
        head = f"{where} -> {choice}" if choice is not None else str(where)
    elif kind == "precision":
        head = f"{where}: {rest.pop('from', '?')} -> {rest.pop('to', '?')}"
    else:
        head = str(where) if where is not None else ""
    extra = ", ".join(f"{k}={short(v)}" for k, v in rest.items())
    return f"{head} ({extra})" if head and extra else head or extra


def short(v: Any, limit: int = 80) -> str:
    s = str(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."

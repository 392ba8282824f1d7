"""One readable line per pass detail. Passes from any plugin emit details (dicts with a `kind`); the
known kinds get a sentence, anything else is shown as `key=value` pairs so nothing is hidden."""

from __future__ import annotations

from typing import Any

KNOWN_KINDS = ("fused", "refused", "removed", "pruned", "folded", "routed", "precision")


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
    where = next((rest.pop(k) for k in ("node", "layer", "router", "group") if rest.get(k) is not None), None)
    pattern = rest.pop("pattern", None)
    subject = f"{pattern} at {where}" if pattern and where else str(pattern or where or "")
    if kind == "refused":
        head = f"{subject}: {rest.pop('reason', 'no reason given')}"
    elif kind in ("pruned", "folded"):
        kept, total, chans = rest.pop("kept", None), rest.pop("total", None), rest.pop("channels", None)
        count = f"{kept}/{total} channels kept" if kept is not None and total is not None else \
            f"channels {pair(chans)}" if chans is not None else ""
        head = f"{subject}: {count}" if count else subject
    elif kind == "routed":
        choice = next((rest.pop(k) for k in ("expert", "route", "decision") if k in rest), None)
        value = rest.pop("value", None)
        head = subject + (f" [{short(value)}]" if value is not None else "") + \
            (f" -> {short(choice)}" if choice is not None else "")
    elif kind == "precision":
        head = f"{subject}: {rest.pop('from', '?')} -> {rest.pop('to', '?')}"
    elif kind == "removed" and not subject:
        head = str(rest.pop("what", ""))
    else:
        head = subject
    extra = ", ".join(f"{k}={pair(v)}" for k, v in rest.items())
    return f"{head} ({extra})" if head and extra else head or extra


def pair(v: Any) -> str:
    """[before, after] pairs, as pruning reports them, read `before -> after`."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{v[0]} -> {v[1]}"
    return short(v)


def short(v: Any, limit: int = 80) -> str:
    s = str(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."

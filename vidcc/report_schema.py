"""The JSON Schema of `vidcc explain --json` / `vidcc diff --json` (vidcc/schemas/explain.schema.json)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from vidcc.errors import VidccError

SCHEMA_FILE = "schemas/explain.schema.json"


@lru_cache(maxsize=None)
def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("vidcc").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def problems(report: dict[str, Any]) -> list[str]:
    """Every way `report` breaks the schema, as 'path: message' lines (empty when it conforms)."""
    try:
        import jsonschema
    except ImportError:  # a test-extra dependency; the CLI never needs it
        raise VidccError("validating a report needs jsonschema (pip install jsonschema)") from None
    validator = jsonschema.Draft202012Validator(load_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))]


def validate(report: dict[str, Any]) -> None:
    found = problems(report)
    if found:
        raise VidccError(f"report does not match vidcc.explain/1: {found[0]}" +
                         (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))

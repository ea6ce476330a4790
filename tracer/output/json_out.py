"""JSON output: the documented contract (docs/json.md), one object per explanation."""

from __future__ import annotations

import json

JSON_SCHEMA_VERSION = 1


def render(doc: dict, *, pretty: bool = True) -> str:
    body = {"schema": JSON_SCHEMA_VERSION, **doc}
    if pretty:
        return json.dumps(body, indent=2, sort_keys=False)
    return json.dumps(body, separators=(",", ":"))

"""The JSON Schema of journey files, for editors (``journeys/schema.json``; a test compares it with
:func:`json_schema`; regenerate with ``python -m scrm.journeys.schema``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from scrm.journeys.template import JOURNEY_CHANNELS, Journey

DEFAULT_PATH = Path("journeys") / "schema.json"


def json_schema() -> dict[str, Any]:
    schema = Journey.model_json_schema(by_alias=True)
    channel = schema["properties"]["channel"]
    # A 1:1 chat has no group robot: the editor offers only what the loader accepts.
    schema["properties"]["channel"] = {"description": channel.get("description", ""),
                                       "enum": [c.value for c in JOURNEY_CHANNELS], "type": "string"}
    schema["$defs"].pop("Channel", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_json_schema() -> str:
    return json.dumps(json_schema(), ensure_ascii=False, indent=2) + "\n"


if __name__ == "__main__":  # python -m scrm.journeys.schema [PATH]
    path = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH)
    path.write_text(render_json_schema(), encoding="utf-8")
    print(path)

"""The JSON Schema of SOP template files, for editors.

``sop_templates/schema.json`` is generated from the pydantic model, so completion and inline
errors in VS Code (YAML extension, ``# yaml-language-server: $schema=./schema.json``) follow the
format the loader enforces. A test compares the shipped file with :func:`json_schema`; after
changing ``scrm/sop/template.py`` regenerate it with ``python -m scrm.sop.schema``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from scrm.sop.template import SopTemplate

DEFAULT_PATH = Path("sop_templates") / "schema.json"


def json_schema() -> dict[str, Any]:
    """The schema with YAML key names (``from``, not ``from_``)."""
    schema = SopTemplate.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_json_schema() -> str:
    """The exact text of schema.json (stable key order, Chinese-safe, trailing newline)."""
    return json.dumps(json_schema(), ensure_ascii=False, indent=2) + "\n"


def write_json_schema(path: str | Path = DEFAULT_PATH) -> Path:
    """Write the schema to ``path`` and return it."""
    path = Path(path)
    path.write_text(render_json_schema(), encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m scrm.sop.schema [PATH]
    print(write_json_schema(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH))

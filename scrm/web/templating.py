"""The one Jinja2 environment of scrm's pages (autoescaped, templates next to this file)."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from scrm.web.lookups import local_time

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["local_time"] = local_time

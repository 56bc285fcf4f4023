"""``scrm journeys``: lint and plan layer journeys (registered in scrm/cli.py)."""

from __future__ import annotations

import typer

journeys_app = typer.Typer(help="Layer journeys: 1:1 messages a layer change starts.", no_args_is_help=True)

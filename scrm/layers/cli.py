"""``scrm layers``: lint, preview and run the layer rules (registered in scrm/cli.py)."""

from __future__ import annotations

import typer

layers_app = typer.Typer(help="Customer layers and rule tags: lint, preview, run.", no_args_is_help=True)

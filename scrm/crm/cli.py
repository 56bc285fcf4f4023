"""``scrm crm``: import chats, calls and SMS; rebuild and lint the follow-up rules."""

from __future__ import annotations

import typer

crm_app = typer.Typer(help="CRM follow-up records: import chats, calls and SMS; rules; rebuild.",
                      no_args_is_help=True)

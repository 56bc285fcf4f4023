"""``scrm crm``: import chats, calls and SMS; rebuild and lint the follow-up rules.

Thin: reading and storing live in :mod:`scrm.crm.ingest`, the records in :mod:`scrm.crm.service`.
Problems print one a line as ``FILE:LINE: message`` (the first 20, then a count)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail
from scrm.cli_common import plural as _plural
from scrm.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from scrm.crm.ingest import ImportReport

crm_app = typer.Typer(help="CRM follow-up records: import chats, calls and SMS; rules; rebuild.",
                      no_args_is_help=True)
import_app = typer.Typer(help="Import chats (WeCom chat-archive JSON lines), calls and SMS (CSV); see "
                              "crm/samples/README.md. Idempotent: a re-import changes nothing.",
                         no_args_is_help=True)
crm_app.add_typer(import_app, name="import")

SHOWN_PROBLEMS = 20
NO_REBUILD = typer.Option(False, "--no-rebuild", help="only store the messages; the worker builds the records")

CALLS_HELP = ("Call-centre CSV (UTF-8, BOM or not; header row): call_id, mobile, userid (the rep, may be empty), "
              "direction (in|out), started_at (ISO-8601; without a zone: sop.timezone), duration_seconds, "
              "status (answered|missed), summary (optional).")
SMS_HELP = ("SMS-gateway CSV (UTF-8, BOM or not; header row): sms_id, mobile, userid (may be empty), "
            "direction (in|out), sent_at (ISO-8601; without a zone: sop.timezone), content.")


def _rebuild(console: Console, engine: Engine, customers: set[str]) -> None:
    """Rebuild the touched customers' records now. Refused rules leave the messages stored (the
    worker or `scrm crm rebuild` builds the records once the rules are fixed): one line, exit 1."""
    import datetime as dt

    from scrm.crm.lint import RulesError
    from scrm.crm.service import rebuild_customers

    if not customers:
        return
    settings = get_settings()
    try:
        done = rebuild_customers(engine, sorted(customers), now=dt.datetime.now(dt.UTC), settings=settings.crm,
                                 tz=ZoneInfo(settings.sop.timezone))
    except RulesError as exc:
        fail(console, f"the messages are stored, but the records of {_plural(len(customers), 'customer')} were "
                      f"not rebuilt: {exc} (fix the rules: `scrm crm rules lint {settings.crm.rules_dir}`, "
                      "then `scrm crm rebuild --all`)")
    console.print(f"rebuilt the records of {_plural(done.customers, 'customer')}: "
                  f"{_plural(done.records, 'record')} ({done.created} new, {done.removed} removed)")


def _import(file: Path, kind: str, run: Callable[..., ImportReport], no_rebuild: bool) -> None:
    import datetime as dt

    console = _console()
    if not file.is_file():
        fail(console, f"cannot read {file}: no such file")
    settings = get_settings()
    size = file.stat().st_size
    with database(console) as engine:
        with Progress(TextColumn(f"importing {kind}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("import", total=size)
            kwargs = {} if kind == "chats" else {"tz": ZoneInfo(settings.sop.timezone)}
            try:
                report = run(engine, file, now=dt.datetime.now(dt.UTC),
                             progress=lambda done, total: bar.update(task, completed=done, total=total), **kwargs)
            except OSError as exc:
                bar.stop()
                fail(console, f"cannot read {file}: {exc.strerror or exc}")
        for line, why in report.problems[:SHOWN_PROBLEMS]:
            console.print(f"{file}:{line}: {why}", markup=False)
        if report.refused > SHOWN_PROBLEMS:
            console.print(f"... and {report.refused - SHOWN_PROBLEMS} more refused line(s)")
        rate = report.read / report.seconds if report.seconds > 0 else 0.0
        summary = (f"{file.name}: read {report.read}, created {report.created}, unchanged {report.unchanged}, "
                   f"revoked {report.revoked}, skipped {report.skipped}, unmatched {report.unmatched}, "
                   f"refused {report.refused}; {_plural(len(report.customers), 'customer')} changed "
                   f"({report.seconds:.1f} s, {rate:,.0f} lines/s)")
        if report.ambiguous:
            summary += f"; {report.ambiguous} on a mobile several customers share"
        colour = "red" if report.refused else "green"
        console.print(f"[{colour}]{escape(summary)}[/{colour}]")
        if not no_rebuild:
            _rebuild(console, engine, report.customers)
    raise typer.Exit(1 if report.refused else 0)


@import_app.command("chats")
def import_chats(
    file: Path = typer.Argument(..., help="decrypted chat-archive export: one JSON message a line (doc 91774)"),
    no_rebuild: bool = NO_REBUILD,
) -> None:
    """Import WeCom chat-archive messages (JSON lines); a recall blanks its message."""
    from scrm.crm import ingest

    _import(file, "chats", ingest.import_chats, no_rebuild)


@import_app.command("calls", help="Import call records. " + CALLS_HELP)
def import_calls(file: Path = typer.Argument(..., help="CSV file"), no_rebuild: bool = NO_REBUILD) -> None:
    from scrm.crm import ingest

    _import(file, "calls", ingest.import_calls, no_rebuild)


@import_app.command("sms", help="Import SMS. " + SMS_HELP)
def import_sms(file: Path = typer.Argument(..., help="CSV file"), no_rebuild: bool = NO_REBUILD) -> None:
    from scrm.crm import ingest

    _import(file, "sms", ingest.import_sms, no_rebuild)


@crm_app.command("link")
def link(no_rebuild: bool = NO_REBUILD) -> None:
    """Attach calls and SMS stored without a customer to the customer their mobile now belongs to
    (run after a contacts sync or `scrm orders reindex-mobiles`)."""
    from scrm.crm.ingest import link_unmatched

    console = _console()
    with database(console) as engine:
        customers = link_unmatched(engine)
        console.print(f"linked messages to {_plural(len(customers), 'customer')}")
        if not no_rebuild:
            _rebuild(console, engine, customers)

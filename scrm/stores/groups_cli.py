"""``scrm stores groups``: put customer groups on stores (assign, detach, list, import a CSV).

Registered on ``scrm stores`` by :mod:`scrm.stores.cli`. The commands parse, call
:mod:`scrm.stores.groups` and print: problems one a line, exit 1 when the input is refused
(nothing written), exit 2 for usage, configuration and database errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scrm.config import get_settings
from scrm.groups.models import GroupStatus
from scrm.stores.cli import _console, _database, _fail, _plural, _read_csv, _write_csv, stores_app
from scrm.stores.groups import (
    AssignReport,
    ChangeReport,
    GroupAssignmentError,
    GroupChange,
    UnknownStoreError,
)

groups_app = typer.Typer(
    help="Customer groups (客户群) and their stores: assign, detach, list, import chat_id,store_code CSV.",
    no_args_is_help=True,
)
stores_app.add_typer(groups_app, name="groups")

_SHOWN_CHANGES = 20  # change lines printed before "… and N more"


def _refused(console: Console, error: GroupAssignmentError, what: str) -> NoReturn:
    for problem in error.problems:
        console.print(f"[red]error:[/red] {escape(problem.message)}")
    console.print(f"[red]{_plural(len(error.problems), 'problem')}; nothing {what}[/red]")
    raise typer.Exit(1)


def _group(change: GroupChange) -> str:
    return f"{change.chat_id} ({change.name})" if change.name else change.chat_id


def _print_changes(console: Console, changes: list[GroupChange]) -> None:
    """One line per group whose store changes: ``chat_id (name): from → to``."""
    for change in changes[:_SHOWN_CHANGES]:
        console.print(f"  {escape(_group(change))}: {escape(change.from_store or 'no store')} → "
                      f"{escape(change.to_store or 'no store')}")
    if len(changes) > _SHOWN_CHANGES:
        console.print(f"  … and {len(changes) - _SHOWN_CHANGES} more")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return _plural(round(seconds), "second")
    return _plural(round(seconds / 60), "minute")


def _next_step(console: Console, report: ChangeReport) -> None:
    """The stores' group QR codes still list their old groups until refreshed: say how."""
    stores = report.stores_to_refresh
    if report.dry_run or not stores:
        return
    options = "".join(f" --store {code}" for code in stores) if len(stores) <= 5 else ""
    interval = _duration(get_settings().routing.refresh_interval_seconds)
    console.print(f"next: refresh the group QR codes with `scrm stores codes{escape(options)}` "
                  f"(a running scheduler, `scrm run` or `scrm scheduler`, does it within {interval})")


def _prefix(report: ChangeReport) -> tuple[str, str]:
    """(colour, words before the summary)."""
    return ("yellow", "dry run, nothing written: would have ") if report.dry_run else ("green", "")


@groups_app.command("assign")
def assign_command(
    store: str = typer.Argument(..., help="The store code (see `scrm stores list`)"),
    chat_ids: list[str] = typer.Argument(..., help="Chat ids of the groups (see `scrm stores groups list`)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report what would change; write nothing"),
) -> None:
    """Put customer groups on a store; a group on another store moves. Any unknown or dismissed
    group, or an unknown or closed store: every problem printed, exit 1, nothing assigned."""
    from scrm.stores.groups import assign_groups

    console = _console()
    with _database(console) as engine:
        try:
            report = assign_groups(engine, store, chat_ids, dry_run=dry_run)
        except GroupAssignmentError as exc:
            _refused(console, exc, "assigned")
    colour, prefix = _prefix(report)
    store_label = f"{report.store_code} ({report.store_name})"
    console.print(f"[{colour}]{prefix}assigned {_plural(len(report.assigned) + len(report.moved), 'group')} to "
                  f"{escape(store_label)}: {len(report.assigned)} added, {len(report.moved)} moved, "
                  f"{len(report.unchanged)} unchanged[/{colour}]")
    _print_changes(console, report.moved)
    _next_step(console, report)


@groups_app.command("detach")
def detach_command(
    chat_ids: list[str] = typer.Argument(..., help="Chat ids of the groups"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report what would change; write nothing"),
) -> None:
    """Take customer groups off their stores. Any unknown chat id: exit 1, nothing detached."""
    from scrm.stores.groups import detach_groups

    console = _console()
    with _database(console) as engine:
        try:
            report = detach_groups(engine, chat_ids, dry_run=dry_run)
        except GroupAssignmentError as exc:
            _refused(console, exc, "detached")
    colour, prefix = _prefix(report)
    console.print(f"[{colour}]{prefix}detached {_plural(len(report.detached), 'group')}, "
                  f"{len(report.unchanged)} unchanged (had no store)[/{colour}]")
    _print_changes(console, report.detached)
    _next_step(console, report)


@groups_app.command("list")
def list_command(
    store: str | None = typer.Option(None, "--store", help="Only this store's groups"),
    unassigned: bool = typer.Option(False, "--unassigned", help="Only active groups without a store"),
    limit: int = typer.Option(50, "--limit", min=0, help="Show at most this many (0: all)"),
) -> None:
    """Customer groups with their owner, current members and store."""
    from scrm.stores.groups import list_store_groups

    console = _console()
    with _database(console) as engine:
        try:
            listing = list_store_groups(engine, store, unassigned=unassigned, limit=limit or None)
        except UnknownStoreError as exc:
            _fail(console, str(exc))
    if not listing.total:
        if store is not None:
            console.print(f"store {escape(store)} has no groups yet: add some with "
                          f"`scrm stores groups assign {escape(store)} CHAT_ID…`")
        elif unassigned:
            console.print("every active group has a store")
        else:
            console.print("no customer groups yet: run `scrm sync` to load them from WeCom")
        return
    kind = "unassigned group" if unassigned else "group"
    title = _plural(listing.total, kind) + (f" of store {store}" if store is not None else "")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("chat_id", no_wrap=True)
    table.add_column("name")
    table.add_column("owner")
    table.add_column("members", justify="right")
    table.add_column("store")
    table.add_column("status")
    for r in listing:
        owner = f"{r.owner_name} ({r.owner_userid})" if r.owner_name else (r.owner_userid or "")
        store_cell = escape(f"{r.store_code} {r.store_name or '(no such store)'}") if r.store_code else "[dim]-[/dim]"
        status = r.status if r.status == GroupStatus.active else f"[dim]{escape(r.status)}[/dim]"
        table.add_row(escape(r.chat_id), escape(r.name), escape(owner), str(r.members), store_cell, status)
    console.print(table)
    if listing.total > len(listing):
        console.print(f"… and {listing.total - len(listing)} more (--limit 0 shows all)")


@groups_app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="The CSV file: chat_id,store_code (empty store_code: detach)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report what would change; write nothing"),
) -> None:
    """Assign groups to stores from a CSV (an empty store_code takes the group off its store).
    Any problem in the file: every one printed with its line, exit 1, nothing imported."""
    from scrm.stores.groups import import_assignments, parse_assignments

    console = _console()
    result = _read_csv(console, file, parse_assignments)
    problems = [error.located(file) for error in result.errors]
    report: AssignReport | None = None
    if not problems:
        with _database(console) as engine:
            try:
                report = import_assignments(engine, result.rows, dry_run=dry_run)
            except GroupAssignmentError as exc:
                problems = [problem.located(file) for problem in exc.problems]
    if report is None:
        for line in problems:
            console.print(line, markup=False)
        console.print(f"[red]{_plural(len(problems), 'problem')} in {escape(str(file))}; nothing imported[/red]")
        raise typer.Exit(1)
    colour, prefix = _prefix(report)
    console.print(f"[{colour}]{prefix}assigned {len(report.assigned)}, moved {len(report.moved)}, "
                  f"detached {len(report.detached)}, unchanged {len(report.unchanged)} "
                  f"({_plural(len(result.rows), 'group')} in the file)[/{colour}]")
    _print_changes(console, report.changes)
    _next_step(console, report)


@groups_app.command("export")
def export_command(
    file: Path | None = typer.Argument(None, help="Write here (default: standard output)"),
    unassigned: bool = typer.Option(False, "--unassigned", help="Only active groups without a store"),
    bom: bool = typer.Option(True, "--bom/--no-bom",
                             help="Start the file with a UTF-8 BOM so Excel shows Chinese correctly (files only)"),
) -> None:
    """Write the groups as chat_id,store_code CSV (with name, owner, members and status for the
    reader): fill in store_code in Excel, then `scrm stores groups import` it."""
    from scrm.stores.groups import export_assignments

    console = _console()
    with _database(console) as engine:
        text = export_assignments(engine, unassigned=unassigned)
    _write_csv(console, file, text, bom=bom, noun="group")

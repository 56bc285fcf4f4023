"""``scrm inbox``: what the callback inbox holds, and re-driving rows (registered in scrm/cli.py).

The commands only parse and print; the queries and the re-drive are in :mod:`scrm.callbacks.inbox`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import typer
from rich.console import Console
from rich.markup import escape

from scrm.callbacks import inbox
from scrm.callbacks.models import InboxStatus
from scrm.cli_common import console as _console
from scrm.cli_common import database as _database
from scrm.cli_common import fail as _fail
from scrm.db import as_utc

inbox_app = typer.Typer(
    help="The callback inbox: counts, failed and stuck rows with their errors, and re-driving rows.",
    invoke_without_command=True,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds (``600``)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+", value):
        return timedelta(seconds=int(value))
    if not re.fullmatch(r"(?:\d+[smhd])+", value):
        raise typer.BadParameter(f"{text!r} is not a duration: use e.g. 90s, 10m, 2h, 1d or 1h30m",
                                 param_hint="'--stuck-after'")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value)))






def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            minutes = f"{seconds % size // 60}m" if unit == "h" and seconds % size >= 60 else ""
            return f"{seconds // size}{unit}{minutes}"
    return f"{seconds}s"


def _when(at: datetime, now: datetime) -> str:
    at = as_utc(at)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} ({_duration(now - at)} ago)"


def _table(console: Console, header: list[str], rows: list[list[str]], right: Collection[int] = ()) -> None:
    """Aligned columns, one line per row, the last column unpadded (errors stay whole on one line)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join([*padded, cells[-1]]).rstrip()

    console.print(escape("  " + line(header)))
    for r in rows:
        console.print(escape("  " + line(r)))


def _rows(console: Console, title: str, page: inbox.RowList, now: datetime, *, limit: int) -> None:
    console.print(f"\n[bold]{escape(title)}[/bold]: {page.total}")
    if page.rows:
        _table(console, ["id", "event", "change_type", "attempts", "received_at (UTC)", "last_error"],
               [[str(r.id), r.event, r.change_type, str(r.attempts), _when(r.received_at, now), r.last_error or "-"]
                for r in page.rows], right={0, 3})
    if page.more:
        console.print(f"  … {page.more} more (--offset {page.offset + len(page.rows)} --limit {limit} shows the next)")


@inbox_app.callback()
def show(
    ctx: typer.Context,
    stuck_after: str = typer.Option("10m", "--stuck-after",
                                    help="A pending row older than this is stuck (90s, 10m, 2h)"),
    limit: int = typer.Option(20, "--limit", min=0, help="Rows shown per list"),
    offset: int = typer.Option(0, "--offset", min=0, help="Rows skipped in each list (paging)"),
) -> None:
    """Counts by status and by event, then the failed rows, the stuck ones and those applied with a note."""
    if ctx.invoked_subcommand is not None:
        return
    threshold = parse_duration(stuck_after)
    console = _console()
    with _database(console) as engine:
        report = inbox.inbox_report(engine, stuck_after=threshold, limit=limit, offset=offset)
    now = datetime.now(UTC)
    counts = ", ".join(f"{report.by_status.get(s, 0)} {s}" for s in InboxStatus)
    others = {k: v for k, v in report.by_status.items() if k not in set(InboxStatus)}
    counts += "".join(f", {n} {escape(status)}" for status, n in sorted(others.items()))
    console.print(f"inbox: {report.total} rows: {counts}")
    if report.by_event:
        console.print("\n[bold]by event[/bold]")
        statuses = [s.value for s in InboxStatus] + sorted(others)
        _table(console, ["event", "change_type", *statuses, "total"],
               [[e.event, e.change_type, *(str(e.by_status.get(s, 0)) for s in statuses), str(e.total)]
                for e in report.by_event], right=set(range(2, len(statuses) + 3)))
    _rows(console, "failed (gave up after max attempts)", report.failed, now, limit=limit)
    _rows(console, f"stuck (pending for more than {_duration(threshold)})", report.stuck, now, limit=limit)
    _rows(console, "done with a note (applied as far as WeCom allowed)", report.noted, now, limit=limit)
    if report.failed.total or report.stuck.total:
        console.print("\nre-drive: scrm inbox redrive ID... (or --failed for every failed row)")


def _send_to_queue(inbox_ids: list[int]) -> None:
    """The receiver's enqueue, on the configured broker (Redis)."""
    from workers import actors
    from workers.broker import current_broker

    current_broker()
    actors.enqueue_callbacks(inbox_ids)


@inbox_app.command("redrive")
def redrive_command(
    ids: list[int] | None = typer.Argument(None, help="Inbox ids to re-drive", show_default=False),
    failed: bool = typer.Option(False, "--failed", help="Re-drive every failed row"),
    include_done: bool = typer.Option(False, "--include-done",
                                      help="Also re-drive rows that are done (they are applied again)"),
) -> None:
    """Set rows back to pending with attempts reset and queue them again; each is applied once."""
    console = _console()
    with _database(console) as engine:
        try:
            result = inbox.redrive(engine, _send_to_queue, ids or [], failed=failed, include_done=include_done)
        except inbox.InboxError as exc:
            _fail(console, str(exc))
    if not result.rows and not result.skipped:
        console.print("nothing to re-drive: no failed rows")
        return
    if result.rows:
        rows = f"{len(result.rows)} row{'' if len(result.rows) == 1 else 's'}"
        console.print(f"re-drove {rows} (now pending, attempts 0):")
        _table(console, ["id", "was", "event", "change_type", "attempts", "last_error"],
               [[str(r.id), r.status, r.event, r.change_type, str(r.attempts), r.last_error or "-"]
                for r in result.rows], right={0, 4})
    if result.skipped:
        console.print(f"[yellow]skipped[/yellow] (a worker applied them meanwhile): "
                      f"{', '.join(map(str, result.skipped))}")
    if result.rows and result.enqueued:
        console.print("queued: the workers apply them now")
    elif result.rows:
        console.print(f"[yellow]not queued[/yellow] ({escape(result.enqueue_error or '')}): the rows are pending and "
                      "the scheduler's relay queues them once Redis is back")

"""``scrm kpi``: roll up clicks, orders, refunds and deliveries for the dashboard (registered in
scrm/cli.py). The commands only parse and print; the work is :mod:`scrm.kpi.rollups`."""

from __future__ import annotations

import datetime as dt

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail
from scrm.config import get_settings

kpi_app = typer.Typer(help="Managers' figures: order attribution and the dashboard's rollups.", no_args_is_help=True)

_STAGES = {"link_clicks": "clicks", "orders": "orders", "order_refunds": "refunds", "sop_posts": "delivered posts"}


def _run(rebuild: bool) -> None:
    from scrm.kpi.rollups import RollupError, rebuild_rollups, refresh_rollups

    console = _console()
    settings = get_settings()
    tz = settings.sop.timezone
    window = dt.timedelta(hours=settings.kpi.attribution_window_hours)
    with database(console) as engine, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                               console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)

        try:
            run = rebuild_rollups if rebuild else refresh_rollups
            report = run(engine, tz=tz, window=window, progress=progress)
        except RollupError as exc:
            bar.stop()
            fail(console, str(exc))
    verb = "rebuilt" if rebuild else "refreshed"
    console.print(f"{verb} in {report.seconds:.1f}s: {report.clicks} clicks, {report.orders} orders attributed "
                  f"({report.reattributed} moved by late clicks), {report.refunds} refunds, "
                  f"{report.posts_added} posts delivered, {report.posts_withdrawn} withdrawn")
    for name in report.skipped:
        console.print(escape(f"{name}: busy (a long insert holds the table), left for the next refresh"))


@kpi_app.command("refresh")
def refresh() -> None:
    """Roll up what arrived since the last refresh (the scheduler does this every
    kpi.rollup_interval_seconds; safe to run beside it)."""
    _run(rebuild=False)


@kpi_app.command("rebuild")
def rebuild() -> None:
    """Forget the rollups and attributions and compute them again from all clicks, orders,
    refunds and posts (after changing the attribution window or moving groups between stores)."""
    _run(rebuild=True)

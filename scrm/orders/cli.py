"""``scrm orders``: import a shop's CSV export, and backfill the mobile index (registered in scrm/cli.py).

The commands only parse and print; validation and recording are in :mod:`scrm.orders.csvimport`
and :mod:`scrm.orders.service`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail

orders_app = typer.Typer(help="Orders from the shop: CSV import and the customer mobile index.",
                         no_args_is_help=True)



@orders_app.command("import")
def import_file(
    file: Path = typer.Argument(..., help="CSV export (UTF-8, header row); see README, 'Orders'"),
    source: str = typer.Option("shop", help="the shop system the order ids belong to, for rows without a source"),
) -> None:
    """Import orders from a CSV file: all rows or none; a re-import changes nothing."""
    from scrm.orders.csvimport import ImportRefused, import_orders

    console = _console()
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(console, f"cannot read {file}: {exc.strerror or exc}")
    with database(console) as engine, Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                                               console=console, transient=True) as bar:
        task = bar.add_task("import", total=None)
        try:
            report = import_orders(engine, data, source=source,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        except ImportRefused as exc:
            bar.stop()
            for p in exc.problems:
                console.print(escape(f"line {p.line}: {p.reason}"))
            fail(console, f"{len(exc.problems)} bad row(s) in {file}: nothing imported")
    console.print(f"imported {report.imported}, already present {report.already_present}, "
                  f"matched {report.matched}, unmatched {report.unmatched} ({report.rows} rows)")


@orders_app.command("reindex-mobiles")
def reindex_mobiles() -> None:
    """Fill the customer mobile index from customers' remark mobiles (run after a contacts sync)."""
    from scrm.orders.service import reindex_mobiles as reindex

    console = _console()
    with database(console) as engine:
        report = reindex(engine)
    console.print(f"indexed {report.added} new mobile(s) of {report.customers} customer(s)")

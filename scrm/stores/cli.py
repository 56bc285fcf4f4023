"""``scrm stores``: the store list in and out of a spreadsheet (registered in scrm/cli.py).

The commands are thin: parsing, importing and exporting live in :mod:`scrm.stores.csvio`.
Problems are printed one a line as ``file:line: column: message`` without wrapping, and a file
with any problem imports nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scrm.cli_common import console as _console
from scrm.cli_common import database as _database
from scrm.cli_common import fail as _fail
from scrm.cli_common import plural as _plural

stores_app = typer.Typer(
    help="Stores: import and export the store list as CSV (Excel), list stores, put customer groups on them.",
    no_args_is_help=True,
)





def _read_csv(console: Console, file: Path, parse):
    """The parsed file, its notes printed; a missing file or a folder is a one-line error."""
    if not file.exists():
        _fail(console, f"{file} does not exist")
    if not file.is_file():
        _fail(console, f"{file} is not a file")
    result = parse(file.read_bytes())
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(f'{file}: {note}')}")
    return result


def _write_csv(console: Console, file: Path | None, text: str, *, bom: bool, noun: str) -> None:
    """An export to standard output, or to ``file`` (with a BOM for Excel) and a count of rows."""
    if file is None:
        typer.echo(text, nl=False)
        return
    if file.is_dir():
        _fail(console, f"{file} is a directory")
    file.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    count = sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1
    console.print(f"exported {_plural(count, noun)} to {escape(str(file))}")




@stores_app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="The CSV file: code,name,address,city,latitude,longitude,status,staff"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and report what would change; write nothing"),
) -> None:
    """Create or update stores from a CSV. Any problem in the file: every one is printed, exit 1,
    nothing imported. Stores not in the file are left as they are (close one with status=closed)."""
    from scrm.stores.csvio import import_stores, parse_stores

    console = _console()
    result = _read_csv(console, file, parse_stores)
    for error in result.errors:
        console.print(error.located(file), markup=False)
    if result.errors:
        console.print(f"[red]{_plural(len(result.errors), 'problem')} in {escape(str(file))}; "
                      f"nothing imported[/red]")
        raise typer.Exit(1)

    verb = "checking" if dry_run else "importing"
    with _database(console) as engine:
        with console.status(f"{verb} {_plural(len(result.stores), 'store')} from {escape(str(file))}…"):
            report = import_stores(engine, result.stores, dry_run=dry_run)

    prefix = "dry run, nothing written: would have " if dry_run else ""
    colour = "yellow" if dry_run else "green"
    console.print(f"[{colour}]{prefix}created {report.created}, updated {report.updated}, "
                  f"unchanged {report.unchanged} "
                  f"({_plural(report.created + report.updated + report.unchanged, 'store')} in the file)[/{colour}]")
    console.print(f"staff: {report.staff_added} added, {report.staff_removed} removed")
    if report.unknown_staff:
        shown = ", ".join(report.unknown_staff[:10]) + (" …" if len(report.unknown_staff) > 10 else "")
        console.print(f"[yellow]warning:[/yellow] {_plural(len(report.unknown_staff), 'staff userid')} not among "
                      f"the synced employees: {escape(shown)} (a typo, or run `scrm sync`)")


@stores_app.command("export")
def export_command(
    file: Path | None = typer.Argument(None, help="Write here (default: standard output)"),
    bom: bool = typer.Option(True, "--bom/--no-bom",
                             help="Start the file with a UTF-8 BOM so Excel shows Chinese correctly (files only)"),
) -> None:
    """Write every store as CSV, ordered by code; the file imports back unchanged."""
    from scrm.stores.csvio import export_stores

    console = _console()
    with _database(console) as engine:
        text = export_stores(engine)
    _write_csv(console, file, text, bom=bom, noun="store")


@stores_app.command("list")
def list_command(
    city: str | None = typer.Option(None, "--city", help="Only stores in this city (as written in the store list)"),
    limit: int = typer.Option(50, "--limit", min=0, help="Show at most this many (0: all)"),
) -> None:
    """Stores with their staff and active customer groups, ordered by code."""
    from sqlalchemy import func, select

    from scrm.groups.models import CustomerGroup, GroupStatus
    from scrm.stores.models import Store, StoreStaff, StoreStatus

    console = _console()
    s, ss, g = Store.__table__, StoreStaff.__table__, CustomerGroup.__table__
    staff = select(ss.c.store_code, func.count().label("n")).group_by(ss.c.store_code).subquery()
    groups = (select(g.c.store_code, func.count().label("n")).where(g.c.status == GroupStatus.active)
              .group_by(g.c.store_code).subquery())
    where = [s.c.city == city] if city is not None else []
    query = (select(s.c.code, s.c.name, s.c.city, s.c.status,
                    func.coalesce(staff.c.n, 0).label("staff"), func.coalesce(groups.c.n, 0).label("groups"))
             .select_from(s.outerjoin(staff, staff.c.store_code == s.c.code)
                          .outerjoin(groups, groups.c.store_code == s.c.code))
             .where(*where).order_by(s.c.code))
    if limit:
        query = query.limit(limit)
    with _database(console) as engine:
        with engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(s).where(*where)).scalar_one()
            rows = conn.execute(query).all()
            cities = [] if total or city is None else sorted(
                c for c in conn.execute(select(s.c.city).distinct()).scalars() if c)

    if not total:
        if city is None:
            console.print("no stores yet: import a CSV with `scrm stores import FILE`")
        else:
            known = f"; cities: {', '.join(cities)}" if cities else ""
            console.print(f"no stores in city {escape(repr(city))}{escape(known)}")
        return
    title = _plural(total, "store") + (f" in {city}" if city is not None else "")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("code", no_wrap=True)
    table.add_column("name")
    table.add_column("city")
    table.add_column("status")
    table.add_column("staff", justify="right")
    table.add_column("groups", justify="right")
    for r in rows:
        status = "[green]open[/green]" if r.status == StoreStatus.open else f"[dim]{escape(r.status)}[/dim]"
        table.add_row(escape(r.code), escape(r.name), escape(r.city or ""), status, str(r.staff), str(r.groups))
    console.print(table)
    if total > len(rows):
        console.print(f"… and {total - len(rows)} more (--limit 0 shows all)")


# Last, because it imports this module's helpers: registers `scrm stores groups` on stores_app.
from scrm.stores import groups_cli as _groups_cli  # noqa: E402,F401

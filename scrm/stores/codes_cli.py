"""``scrm stores codes``: create or refresh every store's QR codes in WeCom."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from scrm.stores.cli import stores_app


@stores_app.command("codes")
def codes_command(
    store: list[str] = typer.Option([], "--store", help="Only these store codes (repeatable)"),
) -> None:
    """Create the staff "contact me" codes and each store's group live code, or bring them up to
    date (new staff, staff who left, groups that filled up or were dismissed). Safe to rerun."""
    from sqlmodel import Session, select

    from scrm.config import get_settings
    from scrm.db import get_engine
    from scrm.runtime import build_client
    from scrm.stores import service
    from scrm.stores.models import Store, StoreStatus

    console = Console(soft_wrap=True, highlight=False)
    s = get_settings()
    engine = get_engine(s.database_url())
    factory = lambda: Session(engine, expire_on_commit=False)  # noqa: E731
    client = build_client(s)
    with factory() as session:
        known = [st.code for st in session.exec(select(Store).where(Store.status == StoreStatus.open))]
    unknown = [c for c in store if c not in known]
    if unknown:
        console.print(f"[red]error:[/red] unknown or closed store(s): {escape(', '.join(unknown))}")
        raise typer.Exit(2)
    targets = store or known
    with console.status("creating staff codes…"):
        staff = service.ensure_staff_codes(factory, client, store_codes=targets)
    console.print(f"staff codes: {staff.created} created, {staff.unchanged} unchanged, {staff.removed} removed")
    for problem in staff.failed:
        console.print(f"[yellow]failed:[/yellow] {escape(problem)}")
    outcomes: dict[str, list[str]] = {}
    with console.status("refreshing group live codes…"):
        for code in targets:
            outcome = service.refresh_group_code(factory, client, code, cap=s.routing.group_qr_cap,
                                                 room_base_id=s.routing.room_base_id)
            outcomes.setdefault(outcome, []).append(code)
    console.print("group live codes: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(outcomes.items())))
    if outcomes.get("no_groups"):
        console.print(f"[yellow]no groups yet:[/yellow] {escape(', '.join(outcomes['no_groups'][:20]))} "
                      "(put customer groups on a store with `scrm stores groups assign STORE CHAT_ID…`; "
                      "`scrm stores groups list --unassigned` shows the chat ids)")
    console.print(f"staff QR pages: {s.web.base_url()}/s/<store code>")
    raise typer.Exit(1 if staff.failed or outcomes.get("failed") else 0)

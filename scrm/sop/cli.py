"""``scrm sop``: the operators' commands for SOP templates (registered in scrm/cli.py).

The commands are thin: loading and checking live in :mod:`scrm.sop.lint`, rendering in
:mod:`scrm.sop.render`. Output is meant for terminals and CI logs alike, so problems are
printed one a line as ``file:line: message`` without wrapping.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape

from scrm.cli_common import console as _console
from scrm.cli_common import fail as _fail
from scrm.cli_common import report_lint
from scrm.config import get_settings

sop_app = typer.Typer(
    help="Group SOP templates: check them and preview what a group will receive.",
    no_args_is_help=True,
)




def _quiet_hours() -> tuple[str, str]:
    sop = get_settings().sop
    return sop.quiet_hours_start, sop.quiet_hours_end



@sop_app.command("lint")
def lint_command(
    path: Path | None = typer.Argument(None, help="A template file or directory (default: sop.templates_dir)"),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too"),
) -> None:
    """Check templates: YAML, keys, times, variables, WeCom limits. Every problem is listed in one
    run. Exit 1 on any problem; warnings are listed but pass (unless --strict)."""
    from scrm.sop.lint import lint, template_files

    console = _console()
    target = path or get_settings().sop.templates_dir
    if not target.exists():
        _fail(console, f"{target} does not exist")
    from scrm.layers.lint import defined_layer_ids

    # Layer ids the layer rules define: a template targeting another one is warned about (None: rules unreadable).
    _, problems = lint(target, quiet_hours=_quiet_hours(),
                       layer_ids=defined_layer_ids(get_settings().layers.rules_dir))
    report_lint(console, problems, files=len(template_files(target)), noun="template", strict=strict)


@sop_app.command("preview")
def preview_command(
    template_id: str = typer.Argument(..., help="The template's id"),
    group: str = typer.Option(..., "--group", help="The group's chat_id"),
    date: str | None = typer.Option(None, "--date", help="YYYY-MM-DD (default: today in sop.timezone)"),
    step: str | None = typer.Option(None, "--step", help="Only this step (its id, or 1, 2, ... by position)"),
    path: Path | None = typer.Option(
        None, "--path", help="Template file or directory (default: sop.templates_dir)"),
) -> None:
    """Render a template for one group from the database and print it as the group would see it."""
    from sqlmodel import Session

    from scrm.db import get_engine
    from scrm.groups.models import CustomerGroup
    from scrm.sop.lint import errors_in, lint
    from scrm.sop.render import (
        WEEKDAY_NAMES,
        TemplateRenderError,
        build_context,
        group_fields,
        render_step,
        store_fields,
        uses_store_fields,
    )
    from scrm.stores.models import Store

    console = _console()
    settings = get_settings()
    try:
        day = dt.date.fromisoformat(date) if date else dt.datetime.now(ZoneInfo(settings.sop.timezone)).date()
    except ValueError:
        _fail(console, f"--date {date!r} is not a date YYYY-MM-DD")
    templates, problems = lint(path or settings.sop.templates_dir, quiet_hours=_quiet_hours())
    errors = errors_in(problems)
    if errors:
        for problem in errors:
            console.print(str(problem), markup=False)
        _fail(console, f"{len(errors)} problem(s) in the templates; fix them first (scrm sop lint)")
    by_id = {t.id: t for t in templates}
    template = by_id.get(template_id)
    if template is None:
        _fail(console, f"no template {template_id!r}; known: {', '.join(sorted(by_id)) or 'none'}")
    keys = [template.step_key(i) for i in range(len(template.steps))]
    if step is not None and step not in keys:
        _fail(console, f"template {template_id!r} has no step {step!r}; steps: {', '.join(keys)}")

    with Session(get_engine(settings.database_url())) as session:
        row = session.get(CustomerGroup, group)
        if row is None:
            _fail(console, f"no group with chat_id {group!r} in the database (run `scrm sync` first?)")
        store_row = session.get(Store, row.store_code) if row.store_code else None
        group_vars, store_vars = group_fields(row), store_fields(store_row)

    console.print(f"[bold]{escape(template.name)}[/bold] ({escape(template.id)}) → "
                  f"[bold]{escape(group_vars['name'] or group)}[/bold] ({escape(group)}), "
                  f"{day} {WEEKDAY_NAMES[day.weekday()]}")
    if store_vars:
        console.print(f"store: {escape(store_vars['name'])} ({escape(store_vars['code'])}), "
                      f"{escape(store_vars['city'])}")
    else:
        missing = f" (store {row.store_code!r} not found)" if row.store_code else ""
        if uses_store_fields(template):
            console.print(f"[yellow]this group has no store{escape(missing)}: the plan skips this template for it "
                          "(it uses store fields, which would print empty)[/yellow]")
        else:
            console.print(f"[yellow]this group has no store{escape(missing)}[/yellow]")
    if not template.enabled:
        console.print("[yellow]note: the template is disabled (enabled: false)[/yellow]")
    if not template.days.runs_on(day):
        console.print(f"[yellow]note: the template does not run on {day}; previewing anyway[/yellow]")

    failed = 0
    for i, key in enumerate(keys):
        if step is not None and key != step:
            continue
        s = template.steps[i]
        channel = (s.channel.value if s.channel else settings.sop.default_channel)
        console.rule(f"step {escape(key)} · {s.at} · {channel}", align="left")
        context = build_context(group=group_vars, store=store_vars, day=day, at=s.at, template=template)
        try:
            payload = render_step(template, i, context)
        except TemplateRenderError as exc:
            failed += 1
            console.print(f"[red]cannot render:[/red] {escape(str(exc))}")
            continue
        _print_payload(console, payload)
    if failed:
        raise typer.Exit(2)


def _print_payload(console: Console, payload: Mapping[str, Any]) -> None:
    """The message as the group sees it: text, then each attachment as a card."""
    if "text" in payload:
        console.print(payload["text"]["content"], markup=False)
    for att in payload["attachments"]:
        kind = att["msgtype"]
        card = att[kind]
        if kind == "link":
            console.print(f"[cyan]\\[link][/cyan] {escape(card['title'])}")
            if card.get("desc"):
                console.print(f"       {escape(card['desc'])}")
            console.print(f"       {escape(card['url'])}")
        elif kind == "miniprogram":
            console.print(f"[cyan]\\[mini program][/cyan] {escape(card['title'])}")
            console.print(f"       page {escape(card['page'])} (appid {escape(card['appid'])})")
        elif kind == "image":
            console.print(f"[cyan]\\[image][/cyan] {escape(card.get('pic_url') or 'media ' + card['media_id'])}")

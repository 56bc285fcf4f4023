"""``scrm crm rules lint|preview`` and ``scrm crm rebuild``, added to ``crm_app`` on import (scrm/cli.py
imports this module). Thin: loading and checking live in :mod:`scrm.crm.lint`, the builder in
:mod:`scrm.crm.followups`, the rebuild in :mod:`scrm.crm.service`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail, report_lint
from scrm.cli_common import plural as _plural
from scrm.config import get_settings
from scrm.crm.cli import crm_app

if TYPE_CHECKING:
    from scrm.crm.rules import CrmRules

rules_app = typer.Typer(help="The follow-up rules (crm/*.yaml): lint, and preview a customer's records.",
                        no_args_is_help=True)
crm_app.add_typer(rules_app, name="rules")


def _rules_dir(path: Path | None) -> Path:
    return path or get_settings().crm.rules_dir


def _load(console: Console, path: Path | None) -> CrmRules:
    from scrm.crm.lint import RulesError, load_rules

    target = _rules_dir(path)
    try:
        return load_rules(target)
    except RulesError as exc:
        for problem in exc.problems:
            console.print(str(problem), markup=False)
        fail(console, f"the CRM rules in {target} have {_plural(len(exc.problems), 'problem')}; "
                      "fix them first (scrm crm rules lint)")


@rules_app.command("lint")
def lint_cmd(
    path: Path | None = typer.Argument(None, help="rules folder or file (default: crm.rules_dir)"),
    strict: bool = typer.Option(False, "--strict", help="fail on warnings too"),
) -> None:
    """Check the rules: every problem at its file:line (exit 1 on errors)."""
    from scrm.crm.lint import lint_rules

    console = _console()
    problems, files = lint_rules(_rules_dir(path))
    report_lint(console, problems, files=files, noun="rules file", strict=strict)


def _local(at: dt.datetime, tz: ZoneInfo) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M")


@rules_app.command("preview")
def preview_cmd(
    external_userid: str = typer.Argument(..., help="the customer"),
    rules: Path | None = typer.Option(None, "--rules", help="rules folder to try (default: crm.rules_dir)"),
) -> None:
    """The records a rebuild would make for this customer now, with each fact's message. Writes nothing."""
    from scrm.crm.service import preview

    console = _console()
    settings = get_settings()
    tz = ZoneInfo(settings.sop.timezone)
    ruleset = _load(console, rules)
    with database(console) as engine:
        records, events = preview(engine, external_userid, now=dt.datetime.now(dt.UTC), settings=settings.crm, tz=tz,
                                  rules=ruleset)
    if not records:
        console.print(f"no records: {escape(external_userid)} has no messages (or all were recalled)")
        return
    for n, r in enumerate(records, 1):
        table = Table(title=f"record {n}: {_local(r.started_at, tz)} – {_local(r.ended_at, tz)}", title_justify="left",
                      show_header=False)
        table.add_row("rep", escape(r.userid or "-"))
        table.add_row("channels", ", ".join(r.channels))
        table.add_row("messages", f"{r.message_count} (#{r.first_message_id} … #{r.last_message_id})")
        table.add_row("first question", escape(r.first_question) + (f"  (#{r.first_question_message_id})"
                                                                      if r.first_question_message_id else ""))
        table.add_row("last reply", escape(r.last_reply) + (f"  (#{r.last_reply_message_id})"
                                                              if r.last_reply_message_id else ""))
        for f in r.facts:
            table.add_row("fact", escape(f"{f['label']}: {f['value']}  ({f['rule_id']}, message #{f['message_id']})"))
        for q in r.open_questions:
            table.add_row("open question", escape(f"{q['text']}  (#{q['message_id']})"))
        table.add_row("next step", escape(r.next_step) + f"  ({r.next_step_rule or 'default'})")
        console.print(table)
    risky = [e for e in events if e.kind == "risky"]
    unanswered = [e for e in events if e.kind == "wait" and e.replied_at is None]
    console.print(f"{_plural(len(records), 'record')}, {_plural(len(risky), 'risky reply')}, "
                  f"{_plural(len(unanswered), 'unanswered turn')} (nothing written)")


@crm_app.command("rebuild")
def rebuild_cmd(
    external_userids: list[str] | None = typer.Argument(None, help="customers to rebuild"),
    everyone: bool = typer.Option(False, "--all", help="every customer with messages (after the rules changed)"),
) -> None:
    """Rebuild follow-up records and service events (only what changed is written)."""
    from scrm.crm.lint import RulesError
    from scrm.crm.service import rebuild_all, rebuild_customers

    console = _console()
    if everyone == bool(external_userids):
        fail(console, "give customer ids or --all (not both)")
    settings = get_settings()
    tz = ZoneInfo(settings.sop.timezone)
    ruleset = _load(console, None)
    now = dt.datetime.now(dt.UTC)
    try:
        with database(console) as engine:
            if everyone:
                with Progress(TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(), TextColumn("customers"),
                              TimeRemainingColumn(), console=console, transient=True) as bar:
                    task = bar.add_task("rebuild", total=None)

                    def progress(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=total)

                    report = rebuild_all(engine, now=now, settings=settings.crm, tz=tz, progress=progress,
                                         rules=ruleset, only_changed=False)
            else:
                report = rebuild_customers(engine, external_userids or [], now=now, settings=settings.crm, tz=tz,
                                           rules=ruleset)
    except RulesError as exc:  # pragma: no cover - loaded above
        fail(console, str(exc))
    console.print(f"{_plural(report.customers, 'customer')}: {_plural(report.records, 'record')} "
                  f"({report.created} new, {report.updated} changed, {report.removed} removed), "
                  f"{_plural(report.events, 'service event')} written in {report.seconds:.1f} s")
    if report.missing:
        console.print(f"[yellow]no messages for {_plural(len(report.missing), 'customer')}: "
                      f"{escape(', '.join(report.missing[:10]))}{' …' if len(report.missing) > 10 else ''}[/yellow]")

"""``scrm layers``: lint, preview and run the layer rules (registered in scrm/cli.py).

Thin: loading and checking live in :mod:`scrm.layers.lint`, the pass in
:mod:`scrm.layers.service`, a customer's history in :mod:`scrm.layers.history`. Problems print one
a line as ``file:line: message`` for editors and CI logs; tables are rich tables.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scrm.cli_common import console as _console
from scrm.cli_common import database, fail, report_lint
from scrm.cli_common import plural as _plural
from scrm.config import get_settings

if TYPE_CHECKING:
    from scrm.layers.history import CustomerHistory
    from scrm.layers.report import PassReport
    from scrm.layers.rules import RuleSet

layers_app = typer.Typer(help="Customer layers and rule tags: lint, preview, run.", no_args_is_help=True)

FIRST = "(new)"  # the from-layer of a first placement
DEFAULT_RULE = "(default)"  # no rule matched: the default layer


def _rules_dir(path: Path | None) -> Path:
    return path or get_settings().layers.rules_dir


def parse_at(value: str | None, tz: ZoneInfo) -> dt.datetime:
    """``--at``: an ISO date or date-time; without an offset it is local time in ``tz`` (sop.timezone).
    None is now. Returned aware, in UTC."""
    if value is None:
        return dt.datetime.now(dt.UTC)
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(dt.UTC)


def _load(console: Console, path: Path | None) -> RuleSet:
    from scrm.layers.lint import RulesError, load_ruleset

    target = _rules_dir(path)
    try:
        return load_ruleset(target)
    except RulesError as exc:
        for problem in exc.problems:
            console.print(str(problem), markup=False)
        fail(console, f"the layer rules in {target} have {_plural(len(exc.problems), 'problem')}; "
                      "fix them first (scrm layers lint)")


def _at(console: Console, at: str | None) -> dt.datetime:
    try:
        return parse_at(at, ZoneInfo(get_settings().sop.timezone))
    except ValueError:
        fail(console, f"--at {at!r} is not an ISO date or time (2026-12-01 or 2026-12-01T09:00+08:00)")


def _layer_label(ruleset: RuleSet, layer_id: str | None) -> str:
    if layer_id is None:
        return FIRST
    known = {layer.id: layer.name for layer in ruleset.layers}
    return f"{layer_id} {known[layer_id]}" if layer_id in known else f"{layer_id} (not in the rules)"


def render_report(console: Console, report: PassReport, ruleset: RuleSet, *, title: str) -> None:
    """Where customers land (layer, then the rule that put them there) and who moves where."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("rule")
    table.add_column("customers", justify="right")
    table.add_column("share", justify="right")
    total = sum(report.by_layer_rule.values())
    rule_order = {rule.id: i for i, rule in enumerate(ruleset.rules)}
    described = {rule.id: f"{rule.id}: {rule.description}" if rule.description else rule.id for rule in ruleset.rules}
    layer_order = {layer.id: i for i, layer in enumerate(ruleset.layers)}
    by_layer = report.by_layer()
    # The catalogue's layers in its order (empty ones too), then layers stored by an older rule set.
    shown = [layer.id for layer in ruleset.layers] + sorted(set(by_layer) - set(layer_order))
    for layer_id in shown:
        if layer_id not in by_layer:
            table.add_row(escape(_layer_label(ruleset, layer_id)), "", "0", "-")
            continue
        rules = sorted(((rule, n) for (layer, rule), n in report.by_layer_rule.items() if layer == layer_id),
                       key=lambda item: (rule_order.get(item[0], len(rule_order)) if item[0] else len(rule_order) + 1,
                                         item[0] or ""))
        for k, (rule, n) in enumerate(rules):
            table.add_row(escape(_layer_label(ruleset, layer_id)) if k == 0 else "",
                          escape(described.get(rule, rule) if rule else DEFAULT_RULE), str(n),
                          f"{n / total:.1%}" if total else "-")
    console.print(table)
    moves = [(key, n) for key, n in report.moves.items() if n]
    if moves:
        flow = Table(title="moves" if report.written else "would move", title_justify="left")
        flow.add_column("from")
        flow.add_column("to")
        flow.add_column("customers", justify="right")
        for (src, dst), n in sorted(moves, key=lambda item: (-item[1], item[0][0] or "", item[0][1])):
            flow.add_row(escape(_layer_label(ruleset, src)), escape(_layer_label(ruleset, dst)), str(n))
        console.print(flow)
    else:
        console.print("nobody moves" if not report.written else "nobody moved")
    verb = "changed" if report.written else "would change"
    console.print(f"{_plural(report.customers, 'customer')} evaluated in {report.seconds:.1f}s: {report.moved} "
                  f"{'moved' if report.written else 'would move'} layer, {report.changed} {verb} "
                  f"(layer, rule, store or tags), {_plural(report.groups_relayered, 'group')} {verb} main layer")


@layers_app.command("lint")
def lint_command(
    path: Path | None = typer.Argument(None, help="The rules folder (default: layers.rules_dir)"),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too"),
    stores: bool = typer.Option(False, "--stores", help=(
        "Check per-store and per-city tag names, and the stores and cities conditions name, against "
        "the stores in the configured database")),
) -> None:
    """Check the layer and tag rules: YAML, keys, layer ids, precedence, WeCom tag names. Every
    problem is listed in one run. Exit 1 on any error; warnings pass (unless --strict)."""
    from scrm.layers.lint import lint_rules, stores_for_lint
    from scrm.sop.lint import template_files

    console = _console()
    target = _rules_dir(path)
    if not target.exists():
        fail(console, f"{target} does not exist")
    known = None
    if stores:
        with database(console) as engine:
            known = stores_for_lint(engine)
    problems = lint_rules(target, stores=known)
    report_lint(console, problems, files=len(template_files(target)), noun="file", strict=strict)


@layers_app.command("preview")
def preview_command(
    at: str | None = typer.Option(None, "--at", help="Evaluate as of this ISO time (default: now; "
                                                     "without an offset: sop.timezone)"),
    path: Path | None = typer.Option(None, "--path", help="The rules folder (default: layers.rules_dir)"),
) -> None:
    """How many customers land in each layer and by which rule, and who would move from which
    layer, as a full pass would do now. Writes nothing."""
    from scrm.layers.service import preview_pass

    console = _console()
    ruleset = _load(console, path)
    now = _at(console, at)
    with database(console) as engine:
        report = preview_pass(engine, ruleset, now=now)
    render_report(console, report, ruleset, title=f"layers as of {now.isoformat(timespec='minutes')} (preview)")


@layers_app.command("run")
def run_command(
    at: str | None = typer.Option(None, "--at", help="Evaluate as of this ISO time (default: now; "
                                                     "without an offset: sop.timezone)"),
    path: Path | None = typer.Option(None, "--path", help="The rules folder (default: layers.rules_dir)"),
) -> None:
    """The full pass now (what the nightly job runs): every customer re-layered, moves recorded in
    their history, groups' main layers updated, changed customers' WeCom tags queued for sync."""
    from scrm.layers.service import full_pass

    console = _console()
    ruleset = _load(console, path)
    now = _at(console, at)
    with database(console) as engine, console.status("re-layering every customer…"):
        report = full_pass(engine, ruleset, now=now)
    render_report(console, report, ruleset, title=f"layers as of {now.isoformat(timespec='minutes')}")


def render_history(console: Console, history: CustomerHistory, ruleset: RuleSet | None, tz: ZoneInfo) -> None:
    rules = {rule.id: rule for rule in ruleset.rules} if ruleset else {}

    def label(layer: str | None) -> str:
        return _layer_label(ruleset, layer) if ruleset else (layer or FIRST)

    def rule_label(rule_id: str | None) -> str:
        if rule_id is None:
            return DEFAULT_RULE
        rule = rules.get(rule_id)
        return f"{rule_id}: {rule.description}" if rule and rule.description else rule_id

    if history.layer is None:
        console.print(f"{escape(history.external_userid)}: not layered yet (no full pass or event has seen them)")
    else:
        since = history.since.astimezone(tz).strftime("%Y-%m-%d %H:%M") if history.since else "?"
        console.print(f"{escape(history.external_userid)}: [bold]{escape(label(history.layer))}[/bold] since {since} "
                      f"by {escape(rule_label(history.rule_id))}; home store {escape(history.home_store or '-')}")
    if not history.moves:
        console.print("no moves recorded")
        return
    table = Table(title="moves", title_justify="left")
    for name in ("when", "from", "to", "rule", "store"):
        table.add_column(name)
    for move in history.moves:
        table.add_row(move.changed_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), escape(label(move.from_layer)),
                      escape(label(move.to_layer)), escape(rule_label(move.rule_id)), escape(move.home_store or "-"))
    console.print(table)


@layers_app.command("history")
def history_command(
    external_userid: str = typer.Argument(..., help="The customer's external_userid"),
    path: Path | None = typer.Option(None, "--path", help="The rules folder, for layer names (default: "
                                                          "layers.rules_dir)"),
) -> None:
    """When the customer changed layer and by which rule (times in sop.timezone)."""
    from scrm.layers.history import customer_history
    from scrm.layers.lint import RulesError, load_ruleset

    console = _console()
    try:
        ruleset: RuleSet | None = load_ruleset(_rules_dir(path))
    except RulesError:
        ruleset = None  # the history is still worth reading; ids stand in for names
        console.print("[yellow]the layer rules do not load (scrm layers lint); showing layer ids[/yellow]")
    with database(console) as engine:
        history = customer_history(engine, external_userid)
    render_history(console, history, ruleset, ZoneInfo(get_settings().sop.timezone))

"""``scrm journeys``: lint and plan layer journeys (registered in scrm/cli.py).

Thin: loading and checking live in :mod:`scrm.journeys.lint`, planning in
:mod:`scrm.journeys.jobs` / :mod:`scrm.journeys.service`. Problems print one a line as
``file:line: message``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from scrm.cli_common import console as _console
from scrm.cli_common import database as _database
from scrm.cli_common import fail as _fail
from scrm.cli_common import plural as _plural
from scrm.config import get_settings

journeys_app = typer.Typer(help="Layer journeys: 1:1 messages a layer change starts.", no_args_is_help=True)


@journeys_app.command("lint")
def lint_command(
    path: Path | None = typer.Argument(None, help="A journey file or folder (default: journeys.templates_dir)"),
) -> None:
    """Check journeys: YAML, keys, trigger layers (against layers.rules_dir when it reads), times,
    variables, WeCom limits. Every problem in one run; exit 1 on any."""
    from scrm.journeys.lint import errors_in, known_layers, lint, template_files

    console = _console()
    settings = get_settings()
    target = path or settings.journeys.templates_dir
    if not target.exists():
        _fail(console, f"{target} does not exist")
    layers_dir = Path(settings.layers.rules_dir)
    layers = known_layers(layers_dir) if layers_dir.exists() else None
    _, problems = lint(target, quiet_hours=(settings.sop.quiet_hours_start, settings.sop.quiet_hours_end),
                       layers=layers)
    for problem in problems:
        console.print(str(problem), markup=False)
    errors = len(errors_in(problems))
    colour = "red" if errors else "green"
    note = "" if layers is not None else " (trigger layers not checked: no readable layer rules)"
    console.print(f"[{colour}]{_plural(len(template_files(target)), 'journey')}, "
                  f"{_plural(errors, 'problem')}{note}[/{colour}]")
    raise typer.Exit(1 if errors else 0)


@journeys_app.command("plan")
def plan_command() -> None:
    """Plan the 1:1 messages recent layer changes start, now (the scheduler does this every
    journeys.plan_interval_seconds). Safe to repeat: a change is planned once."""
    from scrm.journeys.jobs import JourneysRefused, load_journeys, run_journey_plan

    console = _console()
    settings = get_settings()
    folder = Path(settings.journeys.templates_dir)
    if not folder.exists():
        _fail(console, f"{folder} does not exist")
    try:
        journeys = load_journeys(folder, settings.sop, Path(settings.layers.rules_dir))
    except JourneysRefused as exc:
        _fail(console, f"journeys refused: {exc}")
    with _database(console) as engine:
        report = run_journey_plan(engine, settings, journeys=journeys)
    if report is None:
        _fail(console, "nothing planned")
    console.print(f"{_plural(report.inserted, 'message')} planned, {report.conflicts} already written by another "
                  f"planner", markup=False)
    for reason, n in sorted(report.dropped.items()):
        console.print(f"  not planned ({reason}): {n}", markup=False)

"""Journeys' periodic work as plain functions the scheduler (and tests) call with a clock.

``run_journey_plan``: plan the messages recent layer changes start, from the journeys on disk
(``journeys.templates_dir``). Broken journey files are refused as a whole: nothing new is planned
until the operator fixes them (messages already planned stay). The fire-time check (a customer
who left the layer gets nothing) runs inside ``scrm.sop.jobs.fire``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.journeys.lint import errors_in, known_layers, lint
from scrm.journeys.service import JourneyReport, plan_journeys
from scrm.journeys.template import Journey
from scrm.logs import get_logger
from scrm.sop.planner import Limits

log = get_logger(__name__)


class JourneysRefused(RuntimeError):
    """The journey folder has problems; the message lists them with file and line."""


def load_journeys(path: Path, sop, layers_dir: Path | None = None) -> dict[str, Journey]:
    """The lint-checked journeys by id; refused as a whole on any error."""
    layers = known_layers(layers_dir) if layers_dir is not None and Path(layers_dir).exists() else None
    journeys, problems = lint(path, quiet_hours=(sop.quiet_hours_start, sop.quiet_hours_end), layers=layers)
    errors = errors_in(problems)
    if errors:
        raise JourneysRefused("; ".join(str(p) for p in errors[:20])
                              + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return {j.id: j for j in journeys}


def journeys_loader(settings):
    """A callable returning the journeys on disk (what the sender, the toolbar page and the
    reminders take as ``journeys=``); an empty dict when the folder is missing."""
    def load() -> dict[str, Journey]:
        path = Path(settings.journeys.templates_dir)
        if not path.exists():
            return {}
        return load_journeys(path, settings.sop, Path(settings.layers.rules_dir))
    return load


def run_journey_plan(engine: Engine, settings, *, now: dt.datetime | None = None,
                     journeys: dict[str, Journey] | None = None) -> JourneyReport | None:
    """Plan journey messages into the ledger (see scrm.journeys.service.plan_journeys). Returns
    None when there is nothing to plan from (no folder, or refused files: logged)."""
    now = now or utcnow()
    if journeys is None:
        path = Path(settings.journeys.templates_dir)
        if not path.exists():
            log.info("journeys_missing", path=str(path))  # journeys are optional: none configured
            return None
        try:
            journeys = load_journeys(path, settings.sop, Path(settings.layers.rules_dir))
        except JourneysRefused as exc:
            log.error("journeys_refused", problems=str(exc)[:2000])
            return None
    return plan_journeys(engine, list(journeys.values()), now=now, tz=ZoneInfo(settings.sop.timezone),
                         limits=Limits.from_settings(settings.sop))

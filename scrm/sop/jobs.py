"""The SOP engine's periodic work, as plain functions the scheduler (and tests) call with a clock.

plan_ahead: re-plan today and the next days from the templates on disk. Broken templates are
refused as a whole: the existing plan stays as it was until the operator fixes the files.
fire: expire posts whose window ended, hold back journey messages whose customer has left the
layer (expired, with the reason in Chinese), report owner claims whose lease lapsed (unconfirmed),
claim due posts, queue the mass sends (group posts and 1:1 journey messages alike).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.sop.owner_posts import lapse_claims
from scrm.sop.planner import Limits
from scrm.sop.service import ReplanResult, claim_due, expire_overdue, replan_day, requeue_stuck
from scrm.sop.template import Channel, SopTemplate

log = get_logger(__name__)


class TemplatesRefused(RuntimeError):
    """The template folder has problems; the message lists them with file and line."""


def load_templates(path: Path, sop) -> dict[str, SopTemplate]:
    """The lint-checked templates by id. Refused as a whole on any error; warnings (e.g. store
    fields for groups without a store, which the planner skips) don't stop them."""
    from scrm.sop.lint import errors_in, lint

    templates, problems = lint(path, quiet_hours=(sop.quiet_hours_start, sop.quiet_hours_end))
    errors = errors_in(problems)
    if errors:
        raise TemplatesRefused("; ".join(str(p) for p in errors[:20])
                               + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return {t.id: t for t in templates}


def plan_ahead(engine: Engine, sop, *, now: dt.datetime | None = None,
               templates: dict[str, SopTemplate] | None = None) -> list[ReplanResult]:
    now = now or utcnow()
    tz = ZoneInfo(sop.timezone)
    if templates is None:
        if not Path(sop.templates_dir).exists():
            log.warning("sop_templates_missing", path=str(sop.templates_dir))
            return []
        try:
            templates = load_templates(Path(sop.templates_dir), sop)
        except TemplatesRefused as exc:
            log.error("sop_templates_refused", problems=str(exc)[:2000])
            return []
    limits = Limits.from_settings(sop)  # its window is sop.owner_task_window_minutes
    today = now.astimezone(tz).date()
    return [
        replan_day(engine, list(templates.values()), today + dt.timedelta(days=n), limits, tz=tz, now=now)
        for n in range(sop.plan_days_ahead + 1)
    ]


def fire(engine: Engine, enqueue_sends: Callable[[list[int]], None], *, now: dt.datetime | None = None,
         chunk: int = 200, remind: Callable[[dt.datetime], dict] | None = None) -> dict[str, int]:
    """Expire, lapse owner claims, claim and queue; returns counts (``unconfirmed``: owner claims
    whose lease passed without a confirmation, never offered again as unsent). A chunk of claimed
    mass and robot posts is one worker job, which groups mass sends by sender and content into
    add_msg_template calls. ``remind(now)`` sends the owners their reminders for posts that fell
    due (one app message per owner)."""
    from scrm.journeys.service import expire_left_layer

    now = now or utcnow()
    expired = expire_overdue(engine, now)
    left_layer = expire_left_layer(engine, now)  # before claiming: such a message never goes out
    lapsed = lapse_claims(engine, now)
    claimed = claim_due(engine, now)
    stuck = requeue_stuck(engine, now)
    for_workers = claimed.get(Channel.mass_send.value, []) + claimed.get(Channel.group_robot.value, []) + stuck
    for i in range(0, len(for_workers), chunk):
        enqueue_sends(for_workers[i:i + chunk])
    counts = {"expired": expired, "left_layer": len(left_layer), "unconfirmed": len(lapsed), "requeued": len(stuck),
              **{channel: len(ids) for channel, ids in claimed.items()}}
    if remind is not None:
        counts["reminders"] = remind(now).get("sent", 0)
    if any(counts.values()):
        log.info("sop_fired", **counts)
    return counts

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
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.sop.models import Audience, SopPost
from scrm.sop.owner_posts import lapse_claims
from scrm.sop.planner import Limits
from scrm.sop.service import ReplanResult, claim_due, expire_overdue, replan_day, requeue_stuck
from scrm.sop.template import Channel, SopTemplate

log = get_logger(__name__)
# Posts one worker job carries, at most (one sender's posts of one step are never split below
# WeCom's call size, so a job can be bigger by one such group).
JOB_POSTS = 1000
# Posts claimed per fire tick: what WeCom takes in one 30 s tick even if every post were its own
# add_msg_template call (sender.ADD_MSG_TEMPLATE_PER_MINUTE / 2), so the send queue never runs
# further behind than a tick; claim_limit(sop) scales it with sop.fire_interval_seconds.
CLAIM_PER_TICK = 4500


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


def claim_limit(sop) -> int:
    """Posts one fire tick claims: a tick's share of add_msg_template's per-minute budget (every
    post its own call, the worst case), and never fewer than the 2,000 claim_due always took."""
    from scrm.sop.sender import ADD_MSG_TEMPLATE_PER_MINUTE

    return max(2000, int(ADD_MSG_TEMPLATE_PER_MINUTE * sop.fire_interval_seconds / 60))


def send_jobs(engine: Engine, ids: list[int], *, job_posts: int = JOB_POSTS) -> list[list[int]]:
    """Claimed ids as worker jobs that make few, full add_msg_template calls: ordered by channel,
    sender, template step and chat, and cut only between one sender's step groups (a group bigger
    than a call is cut at the call's size, 2,000 chats or 10,000 customers). In scheduled order a
    slot interleaves every owner (the planner spreads a bot's groups), which scattered one
    owner's same-content posts over many jobs and calls."""
    from scrm.sop.sender import MAX_CHATS_PER_CALL, MAX_CUSTOMERS_PER_CALL

    c = SopPost.__table__.c
    rows: list[Any] = []
    with engine.connect() as conn:
        for i in range(0, len(ids), 5000):
            rows += conn.execute(select(c.id, c.channel, c.audience, c.sender, c.template_id, c.step_key, c.day,
                                        c.chat_id).where(c.id.in_(ids[i:i + 5000]))).all()
    groups: dict[tuple, list[int]] = {}
    for r in sorted(rows, key=lambda r: (r.channel, r.audience, r.sender, r.template_id, r.step_key, r.day,
                                         r.chat_id)):
        groups.setdefault((r.channel, r.audience, r.sender, r.template_id, r.step_key, r.day), []).append(r.id)
    known = {r.id for r in rows}
    jobs: list[list[int]] = []
    current: list[int] = []
    for (_, audience, *_rest), group in groups.items():
        size = MAX_CUSTOMERS_PER_CALL if audience == Audience.customer else MAX_CHATS_PER_CALL
        for piece in (group[i:i + size] for i in range(0, len(group), size)):
            if current and len(current) + len(piece) > job_posts:
                jobs.append(current)
                current = []
            current += piece
    if current:
        jobs.append(current)
    gone = [i for i in ids if i not in known]  # deleted since claimed: the sender skips them
    if gone:
        jobs.append(gone)
    return jobs


def fire(engine: Engine, enqueue_sends: Callable[[list[int]], None], *, now: dt.datetime | None = None,
         chunk: int = JOB_POSTS, claim: int = CLAIM_PER_TICK,
         remind: Callable[[dt.datetime], dict] | None = None) -> dict[str, int]:
    """Expire, lapse owner claims, claim and queue; returns counts (``unconfirmed``: owner claims
    whose lease passed without a confirmation, never offered again as unsent). Claimed mass and
    robot posts go to workers in jobs of up to ``chunk`` posts that keep one sender's posts of a
    step together (:func:`send_jobs`); the worker groups them by sender and content into
    add_msg_template calls. ``claim``: posts claimed this tick (:func:`claim_limit`).
    ``remind(now)`` sends the owners their reminders for posts that fell due (one app message per
    owner)."""
    from scrm.journeys.service import expire_left_layer

    now = now or utcnow()
    expired = expire_overdue(engine, now)
    left_layer = expire_left_layer(engine, now)  # before claiming: such a message never goes out
    lapsed = lapse_claims(engine, now)
    claimed = claim_due(engine, now, limit=claim)
    stuck = requeue_stuck(engine, now)
    for_workers = claimed.get(Channel.mass_send.value, []) + claimed.get(Channel.group_robot.value, []) + stuck
    for job in send_jobs(engine, for_workers, job_posts=chunk) if for_workers else []:
        enqueue_sends(job)
    counts = {"expired": expired, "left_layer": len(left_layer), "unconfirmed": len(lapsed), "requeued": len(stuck),
              **{channel: len(ids) for channel, ids in claimed.items()}}
    if remind is not None:
        counts["reminders"] = remind(now).get("sent", 0)
    if any(counts.values()):
        log.info("sop_fired", **counts)
    return counts

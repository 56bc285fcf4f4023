"""The CRM work the workers and the scheduler run: the debounced rebuild of the customers new
messages marked (:mod:`scrm.crm.queue`) and the nightly rebuild of everyone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from scrm.crm.queue import KEY_PREFIX, crm_queue
from scrm.crm.service import RebuildReport, rebuild_all, rebuild_customers
from scrm.db import utcnow
from scrm.logs import get_logger

log = get_logger(__name__)


def drain_crm(engine: Engine, redis: Any, settings: Any, *, now: dt.datetime | None = None,
              schedule: Callable[[int], Any], key_prefix: str = KEY_PREFIX) -> RebuildReport:
    """One debounced job: rebuild up to ``crm.rebuild_batch`` marked customers (the queue schedules
    the next job itself while more wait). A failed rebuild puts its ids back before re-raising, so
    the retry (or the next job) sees them."""
    queue = crm_queue(redis, settings, schedule, key_prefix=key_prefix)
    ids = queue.drain(settings.crm.rebuild_batch)
    if not ids:
        return RebuildReport()
    try:
        report = rebuild_customers(engine, ids, now=now or utcnow(), settings=settings.crm,
                                   tz=ZoneInfo(settings.sop.timezone))
    except BaseException:
        log.warning("crm_rebuild_failed", customers=len(ids))
        queue.mark(ids)
        raise
    log.info("crm_rebuild_job", asked=len(ids), customers=report.customers, created=report.created,
             updated=report.updated, removed=report.removed, events=report.events, seconds=round(report.seconds, 3))
    return report


def run_nightly_rebuild(engine: Engine, settings: Any, *, now: dt.datetime | None = None) -> RebuildReport:
    """Every customer: catches up marks Redis lost and next steps that time alone changes (a
    customer waiting past ``no_reply_hours``). Writes only what changed."""
    report = rebuild_all(engine, now=now or utcnow(), settings=settings.crm, tz=ZoneInfo(settings.sop.timezone))
    log.info("crm_nightly_rebuild", customers=report.customers, records=report.records, created=report.created,
             updated=report.updated, removed=report.removed, events=report.events, seconds=round(report.seconds, 3))
    return report

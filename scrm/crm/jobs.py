"""The CRM work the workers and the scheduler run: the debounced rebuild of the customers new
messages marked (:mod:`scrm.crm.queue`) and the nightly rebuild of everyone."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
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


FINGERPRINT_KEY = "scrm:crm:built_with"


def rules_fingerprint(settings: Any) -> str:
    """What the records were built with: the rule files' bytes and the settings the builder reads.
    A change means every record may change, which the selective nightly pass would not notice."""
    from scrm.sop.lint import template_files

    crm = settings.crm
    digest = hashlib.sha256(json.dumps([crm.session_gap_hours, crm.business_hours, crm.business_days,
                                        settings.sop.timezone]).encode())
    base = Path(crm.rules_dir)
    for file in template_files(base) if base.exists() else []:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def run_nightly_rebuild(engine: Engine, settings: Any, *, now: dt.datetime | None = None,
                        redis: Any = None) -> RebuildReport:
    """The customers whose records can change (new or recalled messages, a moved store, a no-reply
    step coming due: :func:`scrm.crm.service.rebuild_all`), or everyone when the rules or the
    builder's settings changed since the last nightly pass (fingerprint kept in Redis; without
    Redis, or when it is down, everyone). Writes only what changed."""
    fingerprint = rules_fingerprint(settings)
    built_with = None
    if redis is not None:
        try:
            built_with = redis.get(FINGERPRINT_KEY)
        except Exception as exc:  # noqa: BLE001 - Redis down: rebuild everyone (slower, never stale)
            log.warning("crm_fingerprint_unavailable", error=str(exc)[:200])
    if isinstance(built_with, bytes):
        built_with = built_with.decode()
    everyone = built_with != fingerprint
    report = rebuild_all(engine, now=now or utcnow(), settings=settings.crm, tz=ZoneInfo(settings.sop.timezone),
                         only_changed=not everyone)
    if redis is not None and everyone:
        try:
            redis.set(FINGERPRINT_KEY, fingerprint)
        except Exception as exc:  # noqa: BLE001 - the next night rebuilds everyone again
            log.warning("crm_fingerprint_unsaved", error=str(exc)[:200])
    log.info("crm_nightly_rebuild", everyone=everyone, customers=report.customers, skipped=report.skipped,
             records=report.records, created=report.created, updated=report.updated, removed=report.removed,
             events=report.events, seconds=round(report.seconds, 3))
    return report

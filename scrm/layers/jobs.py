"""The layering work the scheduler and the workers run: the nightly full pass and the debounced
re-layer of the customers events marked (``scrm.layers.queue``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.layers.queue import RelayerQueue
from scrm.layers.report import PassReport
from scrm.layers.rules import RuleSet
from scrm.layers.service import full_pass, relayer_customers
from scrm.logs import get_logger

log = get_logger(__name__)


def _rules(settings: Any, ruleset: RuleSet | None) -> RuleSet:
    if ruleset is not None:
        return ruleset
    from scrm.layers.lint import load_ruleset  # the YAML rules (scrm layers lint checks the same)

    return load_ruleset(settings.layers.rules_dir)


def run_full_pass(engine: Engine, settings: Any, *, now: dt.datetime | None = None,
                  ruleset: RuleSet | None = None) -> PassReport:
    """The nightly pass over every customer (``layers.nightly_at``): catches up whatever the
    event-driven re-layer missed (Redis down, a lost job) and moves the customers time alone moves
    (60 silent days make a customer dormant without any event)."""
    rules = _rules(settings, ruleset)
    report = full_pass(engine, rules, now=now or utcnow())
    log.info("layers_nightly_pass", customers=report.customers, changed=report.changed, moved=report.moved,
             groups=report.groups_relayered, seconds=round(report.seconds, 3),
             moves={f"{a or '-'}>{b}": n for (a, b), n in report.moves.most_common(20)})
    return report


def drain_relayer(engine: Engine, redis: Any, settings: Any, *, now: dt.datetime | None = None,
                  ruleset: RuleSet | None = None, schedule: Callable[[int], Any]) -> PassReport:
    """One debounced job: re-layer up to ``layers.relayer_batch`` marked customers (the queue
    schedules the next job itself while more wait). A failed pass puts its ids back before
    re-raising, so the retry (or the next job) sees them."""
    queue = RelayerQueue(redis, schedule, debounce_seconds=settings.layers.debounce_seconds)
    ids = queue.drain(settings.layers.relayer_batch)
    if not ids:
        return PassReport()
    try:
        rules = _rules(settings, ruleset)
        report = relayer_customers(engine, rules, ids, now=now or utcnow())
    except BaseException:
        log.warning("layers_relayer_failed", customers=len(ids))
        queue.mark(ids)
        raise
    log.info("layers_relayer_job", asked=len(ids), customers=report.customers, changed=report.changed,
             moved=report.moved, groups=report.groups_relayered, seconds=round(report.seconds, 3))
    return report

"""Periodic jobs (APScheduler): the inbox relay, the SOP engine (plan ahead, fire due posts,
read mass-send results), the click write-behind, the KPI rollups, the nightly layering pass, the
rule-tag sync and the journey planner. One scheduler at a time,
guarded by a Redis lock; the SOP ledger's constraints keep its limits even if two ever run, and
the click flush and the rollups take turns on their own locks."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from scrm.callbacks.relay import relay_pending
from scrm.config import Settings
from scrm.db import get_engine
from scrm.logs import get_logger

log = get_logger(__name__)
LOCK_KEY = "scrm:scheduler:lock"


def relay_job(settings: Settings, send: Callable[[int], None]) -> int:
    return relay_pending(
        get_engine(settings.database_url()),
        send,
        older_than_seconds=settings.pipeline.relay_after_seconds,
        batch=settings.pipeline.relay_batch,
        max_attempts=settings.pipeline.max_attempts,
    )


def sop_plan_job(settings: Settings) -> None:
    from scrm.sop.jobs import plan_ahead

    plan_ahead(get_engine(settings.database_url()), settings.sop)


def sop_fire_job(settings: Settings, enqueue_sop: Callable[[list[int]], None]) -> None:
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from scrm.journeys.jobs import journeys_loader
    from scrm.sop.jobs import claim_limit, fire, load_templates
    from scrm.sop.reminders import send_reminders
    from workers.actors import get_processor

    engine = get_engine(settings.database_url())
    client = get_processor().client  # the process's one WeCom client (shared token, pooled connections)
    toolbar = f"{settings.web.base_url()}/toolbar"
    tz = ZoneInfo(settings.sop.timezone)
    journeys = journeys_loader(settings)
    fire(engine, enqueue_sop, claim=claim_limit(settings.sop),
         remind=lambda now: send_reminders(engine, client, toolbar_url=toolbar, tz=tz, now=now,
                                           agent_id=settings.wecom.agent_id,
                                           templates=lambda: load_templates(Path(settings.sop.templates_dir),
                                                                            settings.sop),
                                           journeys=journeys))


def sop_poll_job(settings: Settings) -> None:
    from workers.actors import get_sop_sender

    get_sop_sender().poll_results()


def store_codes_job(settings: Settings) -> None:
    """Keep every store's group live code pointing at groups with room (member events refresh
    it too; this catches anything missed)."""
    from sqlmodel import Session

    from scrm.stores.service import refresh_all_group_codes
    from workers.actors import get_processor

    engine = get_engine(settings.database_url())
    refresh_all_group_codes(lambda: Session(engine, expire_on_commit=False), get_processor().client,
                            cap=settings.routing.group_qr_cap, room_base_id=settings.routing.room_base_id)


def clicks_flush_job(settings: Settings) -> None:
    """Move the clicks /t/ queued in Redis into the database (the write-behind)."""
    from scrm.clicks.flush import flush_from_settings

    flush_from_settings(settings)


def kpi_rollup_job(settings: Settings) -> None:
    """Bring the dashboard's rollups up to the clicks, orders, refunds and deliveries stored."""
    from scrm.kpi.jobs import refresh_kpi_rollups

    refresh_kpi_rollups(get_engine(settings.database_url()), settings)


def funnel_rollup_job(settings: Settings) -> None:
    """The store funnel's and owner compliance's per-day rollups (re-reads the last few days)."""
    from scrm.kpi.funnel_rollups import refresh_funnel_rollups

    refresh_funnel_rollups(get_engine(settings.database_url()), tz=settings.sop.timezone)


def layers_nightly_job(settings: Settings) -> None:
    """Every customer re-layered (time alone moves people: 60 silent days make a dormant one)."""
    from scrm.layers.jobs import run_full_pass
    from scrm.layers.lint import RulesError

    try:
        run_full_pass(get_engine(settings.database_url()), settings)
    except RulesError as exc:  # say what to fix, once per run; no traceback (nothing to debug)
        log.warning("layers_rules_refused", problems=str(exc)[:1000], hint="scrm layers lint")


def tag_sync_job(settings: Settings) -> None:
    """Apply the rule tags of customers whose layer, store or condition tags changed, within the
    mark_tag limit shared through Redis."""
    from scrm.db import utcnow
    from scrm.layers.lint import RulesError, load_ruleset
    from scrm.layers.tagsync import TagSyncError, mark_tag_limiter, sync_dirty_tags
    from scrm.redisserver import get_redis, redis_url
    from scrm.wecom.errors import WeComAPIError
    from workers.actors import get_processor

    layers = settings.layers
    limiter = mark_tag_limiter(settings, get_redis(redis_url(settings)))
    # One run takes about what the limit lets through in one interval (the rest waits for the next).
    limit = max(1, int(layers.mark_tag_per_minute * layers.tag_sync_interval_seconds / 60))
    try:
        sync_dirty_tags(get_engine(settings.database_url()), get_processor().client,
                        load_ruleset(layers.rules_dir), now=utcnow(), limit=limit, rate=limiter,
                        group_name=layers.tag_group_name)
    except (TagSyncError, WeComAPIError, RulesError) as exc:  # the next run tries again
        log.warning("tag_sync_failed", error=str(exc)[:300])


def crm_nightly_job(settings: Settings) -> None:
    """Link calls and SMS whose mobile is known now, then rebuild the follow-up records that can
    have changed (everyone's after a rules change); writes only what changed."""
    from scrm.crm.ingest import link_unmatched
    from scrm.crm.jobs import run_nightly_rebuild
    from scrm.crm.lint import RulesError
    from scrm.redisserver import get_redis, redis_url

    engine = get_engine(settings.database_url())
    linked = link_unmatched(engine)
    try:
        run_nightly_rebuild(engine, settings, redis=get_redis(redis_url(settings)))
    except RulesError as exc:  # say what to fix, once per run; no traceback (nothing to debug)
        log.warning("crm_rules_refused", linked=len(linked), problems=str(exc)[:1000], hint="scrm crm rules lint")


def journey_plan_job(settings: Settings) -> None:
    """Plan the 1:1 journey messages layer changes started (into the SOP ledger)."""
    from scrm.journeys.jobs import run_journey_plan

    run_journey_plan(get_engine(settings.database_url()), settings)


def make_scheduler(settings: Settings, send: Callable[[int], None],
                   enqueue_sop: Callable[[list[int]], None] | None = None) -> BackgroundScheduler:
    sched = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    sched.add_job(relay_job, "interval", seconds=settings.pipeline.relay_interval_seconds, args=[settings, send],
                  id="inbox_relay")
    sched.add_job(clicks_flush_job, "interval", seconds=settings.clicks.flush_interval_seconds, args=[settings],
                  id="clicks_flush")
    sched.add_job(kpi_rollup_job, "interval", seconds=settings.kpi.rollup_interval_seconds, args=[settings],
                  id="kpi_rollups", next_run_time=datetime.now(UTC))
    sched.add_job(funnel_rollup_job, "interval", seconds=max(300.0, settings.kpi.rollup_interval_seconds),
                  args=[settings], id="funnel_rollups")
    if enqueue_sop is not None:
        sop = settings.sop
        sched.add_job(sop_plan_job, "interval", seconds=sop.plan_interval_seconds, args=[settings], id="sop_plan",
                      next_run_time=datetime.now(UTC))
        sched.add_job(sop_fire_job, "interval", seconds=sop.fire_interval_seconds, args=[settings, enqueue_sop],
                      id="sop_fire")
        sched.add_job(sop_poll_job, "interval", seconds=sop.poll_interval_seconds, args=[settings], id="sop_poll")
        sched.add_job(store_codes_job, "interval", seconds=settings.routing.refresh_interval_seconds,
                      args=[settings], id="store_codes")
        layers = settings.layers
        hour, minute = (int(x) for x in layers.nightly_at.split(":"))
        sched.add_job(layers_nightly_job, CronTrigger(hour=hour, minute=minute, timezone=sop.timezone),
                      args=[settings], id="layers_nightly", misfire_grace_time=3600)
        # Once at start too: a new deployment (or one down over night) has layers without waiting.
        sched.add_job(layers_nightly_job, "date", run_date=datetime.now(UTC), args=[settings], id="layers_at_start")
        sched.add_job(tag_sync_job, "interval", seconds=layers.tag_sync_interval_seconds, args=[settings],
                      id="tag_sync")
        hour, minute = (int(x) for x in settings.crm.nightly_at.split(":"))
        sched.add_job(crm_nightly_job, CronTrigger(hour=hour, minute=minute, timezone=sop.timezone),
                      args=[settings], id="crm_nightly", misfire_grace_time=3600)
        sched.add_job(journey_plan_job, "interval", seconds=settings.journeys.plan_interval_seconds,
                      args=[settings], id="journey_plan", next_run_time=datetime.now(UTC))
    return sched


def run_scheduler(settings: Settings) -> None:
    from scrm.redisserver import get_redis, redis_url
    from workers.broker import setup_broker

    url = redis_url(settings)
    setup_broker(url=url)
    from workers.actors import process_callback, send_sop_posts

    def send_callback(inbox_id: int) -> None:
        process_callback.send(inbox_id)

    def send_posts(post_ids: list[int]) -> None:
        send_sop_posts.send(post_ids)

    r = get_redis(url)
    me = f"{socket.gethostname()}:{os.getpid()}"
    ttl = 30
    sched: BackgroundScheduler | None = None
    try:
        while True:
            try:
                held = bool(r.set(LOCK_KEY, me, nx=True, ex=ttl))
                if not held:
                    holder = r.get(LOCK_KEY)
                    held = (holder.decode() if isinstance(holder, bytes) else holder) == me
                if held:
                    r.expire(LOCK_KEY, ttl)
            except Exception as exc:
                log.warning("scheduler_lock_unavailable", error=type(exc).__name__)
                held = False
            if held and sched is None:
                log.info("scheduler_active", holder=me)
                sched = make_scheduler(settings, send_callback, send_posts)
                sched.start()
            elif not held and sched is not None:
                log.warning("scheduler_lock_lost", holder=me)
                sched.shutdown(wait=False)
                sched = None
            time.sleep(ttl / 3)
    except KeyboardInterrupt:
        pass
    finally:
        if sched is not None:
            sched.shutdown(wait=False)

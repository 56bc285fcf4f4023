"""Worker edge: thin actors that call plain functions in the domain packages."""

from __future__ import annotations

import threading
import time

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from scrm.callbacks.dispatch import Processor

# Actors are declared on a placeholder broker; workers.broker.setup_broker binds them to the real one.
if not isinstance(dramatiq.get_broker(), StubBroker):
    dramatiq.set_broker(StubBroker())

_processor: Processor | None = None
_sop_sender = None
_lock = threading.Lock()


def set_processor(processor: Processor | None) -> None:
    global _processor
    _processor = processor


def get_processor() -> Processor:
    global _processor
    with _lock:
        if _processor is None:
            from scrm.runtime import build_processor

            _processor = build_processor()
        return _processor


@dramatiq.actor(
    queue_name="callbacks",
    max_retries=8,
    min_backoff=1_000,
    max_backoff=120_000,
    time_limit=120_000,
)
def process_callback(inbox_id: int) -> None:
    get_processor().process(inbox_id, queued_ms=queued_ms())


def queued_ms() -> float | None:
    """How long the message being processed waited since it was enqueued (None outside a worker,
    or on a broker without the CurrentMessage middleware)."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return None
    return max(0.0, time.time() * 1000 - message.message_timestamp)


@dramatiq.actor(queue_name="callbacks", max_retries=8, min_backoff=1_000, max_backoff=60_000)
def fan_out_callbacks(inbox_ids: list[int]) -> None:
    """One message per group commit from the receiver becomes one message per callback here, so
    callbacks are still applied in parallel by every worker thread. Running twice is harmless:
    processing claims the inbox row."""
    from workers.broker import send_many

    send_many(process_callback, [(i,) for i in inbox_ids])


def enqueue_callbacks(inbox_ids: list[int]) -> None:
    """Queue the processing of new inbox rows: the receiver's enqueue.

    A batch costs the receiver one small message (one Redis call) instead of one per callback;
    a worker fans it out.
    """
    if len(inbox_ids) == 1:
        process_callback.send(inbox_ids[0])
    elif inbox_ids:
        fan_out_callbacks.send(list(inbox_ids))


def set_sop_sender(sender) -> None:
    global _sop_sender
    _sop_sender = sender


def get_sop_sender():
    global _sop_sender
    with _lock:
        if _sop_sender is None:
            from scrm.runtime import build_sop_sender

            _sop_sender = build_sop_sender()
        return _sop_sender


@dramatiq.actor(queue_name="sop", max_retries=3, min_backoff=5_000, max_backoff=60_000, time_limit=300_000)
def send_sop_posts(post_ids: list[int]) -> None:
    """Send claimed mass-send posts; only rows still ``sending`` are touched, so a redelivered
    message cannot send twice."""
    get_sop_sender().send(post_ids)


@dramatiq.actor(queue_name="layers", max_retries=5, min_backoff=2_000, max_backoff=60_000, time_limit=600_000)
def relayer_dirty() -> None:
    """Re-layer the customers events marked (debounced: one message per burst). Running twice is
    harmless: each run takes what is marked, and the pass writes only what changed."""
    from scrm.config import get_settings
    from scrm.db import get_engine
    from scrm.layers.jobs import drain_relayer
    from scrm.layers.notify import schedule_relayer
    from scrm.redisserver import get_redis, redis_url

    settings = get_settings()
    drain_relayer(get_engine(settings.database_url()), get_redis(redis_url(settings)), settings,
                  schedule=schedule_relayer)


@dramatiq.actor(queue_name="crm", max_retries=5, min_backoff=2_000, max_backoff=60_000, time_limit=600_000)
def crm_rebuild_dirty() -> None:
    """Rebuild the follow-up records of customers new messages marked (debounced: one message per
    burst). Running twice is harmless: a rebuild with nothing new writes nothing."""
    from scrm.config import get_settings
    from scrm.crm.jobs import drain_crm
    from scrm.crm.lint import RulesError, load_rules
    from scrm.crm.queue import schedule_crm_rebuild
    from scrm.db import get_engine
    from scrm.logs import get_logger
    from scrm.redisserver import get_redis, redis_url

    settings = get_settings()
    try:  # refused rules: the marks wait in Redis (no retry storm); the next mark or the nightly job retries
        load_rules(settings.crm.rules_dir)
    except RulesError as exc:
        get_logger(__name__).warning("crm_rules_refused", problems=str(exc)[:1000], hint="scrm crm rules lint")
        return
    drain_crm(get_engine(settings.database_url()), get_redis(redis_url(settings)), settings,
              schedule=schedule_crm_rebuild)


ALL: list[dramatiq.Actor] = [process_callback, fan_out_callbacks, send_sop_posts, relayer_dirty,
                             crm_rebuild_dirty]

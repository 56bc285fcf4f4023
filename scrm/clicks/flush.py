"""The write-behind: clicks queued in Redis by ``/t/{code}`` written to the database in batches.

One flusher at a time holds ``LOCK_KEY`` (SET NX with an expiry). Under it a flush:

1. takes its batch: what a previous flush left in ``PROCESSING_KEY`` (it died or the database
   was away), else up to ``batch`` records moved atomically from ``QUEUE_KEY`` (one MULTI);
2. writes them in one database transaction (:func:`scrm.clicks.store.write_clicks`: rows, the
   unique-click state, the link counters; event ids already stored are skipped);
3. only then deletes ``PROCESSING_KEY``.

The move is one Lua script (atomic) that goes through only while this flusher still holds the
lock; the delete is a WATCHed transaction that goes through only while the processing list still holds exactly the batch
written, so a flusher whose lock expired mid-flush (a long pause) cannot move or drop what its
successor is working on; if both reach the database with the same batch, the database
serialises them and the second finds every event id stored. A database error leaves the batch in
``PROCESSING_KEY`` for the next flush: nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError, WatchError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from scrm.clicks.counting import CountReason
from scrm.clicks.queue import LOCK_KEY, PROCESSING_KEY, QUEUE_KEY, BadRecord, ClickRecord, decode_record
from scrm.clicks.store import write_clicks
from scrm.logs import get_logger

log = get_logger(__name__)
LOCK_SECONDS = 120.0  # far beyond one batch's transaction; the database serialises writers anyway


class ClickFlushFailed(Exception):
    """The database (or Redis) was away: the batch stays in Redis for the next flush."""

    def __init__(self, message: str, kept: int):
        super().__init__(message)
        self.kept = kept


class _LockLost(Exception):
    pass


@dataclass
class FlushReport:
    taken: int = 0  # records taken from Redis
    written: int = 0  # link_clicks rows inserted
    already_written: int = 0  # taken again after an interrupted flush: skipped
    counted: int = 0
    repeats: int = 0
    not_a_person: int = 0
    late: int = 0
    malformed: int = 0  # queue elements that are not click records: logged and dropped
    refused_tokens: int = 0
    batches: int = 0
    busy: bool = False  # another flusher held the lock
    left: int | None = None  # records still queued when the flush ended (None: not asked)
    error: str | None = None  # flush_until_empty: why it stopped early (the batch is kept)
    # Customers (signed customer tokens) whose clicks were written: the layering workers re-layer them.
    customers: set[str] = dataclasses.field(default_factory=set)

    def add(self, other: FlushReport) -> None:
        for f in ("taken", "written", "already_written", "counted", "repeats", "not_a_person", "late",
                  "malformed", "refused_tokens", "batches"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.customers |= other.customers
        self.busy = self.busy or other.busy
        self.left = other.left if other.left is not None else self.left

    def log_fields(self) -> dict:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v not in (0, None, False) and k != "customers"}
        if self.customers:
            fields["customers"] = len(self.customers)
        return fields


# The batch move as one script (atomic in Redis like a MULTI, but one round trip instead of one
# LMOVE per record): check the lock, hand back a leftover processing list, else move up to ARGV[2]
# records from the head of the queue to the processing list (RPUSH in slices: Lua's unpack has a
# stack limit) and trim them off the queue. The RPUSHes of /t/ only append at the tail.
_TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local held = redis.call('LRANGE', KEYS[2], 0, -1)
if #held > 0 then return {1, held} end
local xs = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1)
if #xs == 0 then return {0, xs} end
for i = 1, #xs, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(xs, i, math.min(i + 999, #xs)))
end
redis.call('LTRIM', KEYS[3], #xs, -1)
return {0, xs}
"""


def _take(redis: Redis, token: bytes, batch: int) -> tuple[list, bool]:
    """The batch to write and whether it was left over from an earlier flush."""
    answer = redis.eval(_TAKE, 3, LOCK_KEY, PROCESSING_KEY, QUEUE_KEY, token, batch)
    if answer == -1:
        raise _LockLost
    leftover, raws = answer
    return list(raws), bool(leftover)


def _done(redis: Redis, batch: list) -> bool:
    """Drop the written batch from Redis, if the processing list still holds exactly it (same
    length, same first and last element: event ids are unique, and a new batch is only moved in
    once the list is empty). A successor that took it over while this flusher wrote finds it gone
    or, if it is writing it too, finds every event id stored."""
    with redis.pipeline() as pipe:
        try:
            pipe.watch(PROCESSING_KEY)
            if (pipe.llen(PROCESSING_KEY) != len(batch) or pipe.lindex(PROCESSING_KEY, 0) != batch[0]
                    or pipe.lindex(PROCESSING_KEY, -1) != batch[-1]):
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.delete(PROCESSING_KEY)
            pipe.execute()
            return True
        except WatchError:
            return False


def _release(redis: Redis, token: bytes) -> None:
    with redis.pipeline() as pipe:
        try:
            pipe.watch(LOCK_KEY)
            if pipe.get(LOCK_KEY) == token:
                pipe.multi()
                pipe.delete(LOCK_KEY)
                pipe.execute()
            else:
                pipe.unwatch()
        except WatchError:
            pass


def flush_clicks(engine: Engine, redis: Redis, *, window: dt.timedelta, batch: int,
                 lock_seconds: float = LOCK_SECONDS) -> FlushReport:
    """Write one batch of queued clicks; :class:`ClickFlushFailed` when the database is away."""
    if batch < 1:
        raise ValueError("the flush batch must be at least 1")
    token = uuid.uuid4().hex.encode()
    if not redis.set(LOCK_KEY, token, nx=True, px=int(lock_seconds * 1000)):
        return FlushReport(busy=True)
    report = FlushReport()
    try:
        try:
            raws, leftover = _take(redis, token, batch)
        except _LockLost:
            return FlushReport(busy=True)
        if not raws:
            return report
        records: list[ClickRecord] = []
        for raw in raws:
            try:
                records.append(decode_record(raw))
            except BadRecord as exc:
                report.malformed += 1
                log.error("click_record_dropped", reason=str(exc), record=raw[:200])
        report.taken, report.batches = len(raws), 1
        report.refused_tokens = sum(1 for r in records if r.token_refusal is not None)
        try:
            result = write_clicks(engine, records, window)
        except SQLAlchemyError as exc:
            raise ClickFlushFailed(f"database: {type(exc).__name__}: {str(exc)[:200]}", kept=len(raws)) from exc
        if not _done(redis, raws):
            log.warning("clicks_flush_lock_expired", taken=len(raws), detail="another flusher took the batch over")
        report.written, report.already_written = result.written, result.already_written
        report.customers = {r.external_userid for r in records if r.external_userid and r.token_refusal is None}
        reasons = result.reasons
        report.counted = reasons.get(CountReason.COUNTED, 0)
        report.repeats = reasons.get(CountReason.REPEAT, 0)
        report.not_a_person = reasons.get(CountReason.NOT_A_PERSON, 0)
        report.late = reasons.get(CountReason.LATE, 0)
        if leftover:
            log.info("clicks_flush_resumed", taken=len(raws), already_written=result.already_written)
        return report
    finally:
        _release(redis, token)


def flush_until_empty(engine: Engine, redis: Redis, *, window: dt.timedelta, batch: int,
                      max_batches: int = 1000,
                      on_customers: Callable[[list[str]], None] | None = None) -> FlushReport:
    """Flush batch after batch until the queue is empty (or ``max_batches``); never raises for an
    outage: a database or Redis error ends the run with ``error`` set and the batch kept.
    ``on_customers`` is told which customers' clicks were written (their layers may change)."""
    total = FlushReport()
    for _ in range(max_batches):
        try:
            r = flush_clicks(engine, redis, window=window, batch=batch)
        except ClickFlushFailed as exc:
            total.error = str(exc)
            log.warning("clicks_flush_failed", error=str(exc), kept=exc.kept)
            break
        except RedisError as exc:
            total.error = f"redis: {type(exc).__name__}: {exc}"
            log.warning("clicks_flush_failed", error=total.error)
            break
        total.add(r)
        if r.busy or not r.taken:
            break
    try:
        total.left = int(redis.llen(QUEUE_KEY)) + int(redis.llen(PROCESSING_KEY))
    except RedisError:
        pass
    if total.taken or total.error:
        log.info("clicks_flushed", **total.log_fields())
    if on_customers is not None and total.customers:
        try:
            on_customers(sorted(total.customers))
        except Exception as exc:  # noqa: BLE001 - the clicks are written; the nightly pass catches up
            log.warning("layer_notify_failed", error=str(exc)[:200], customers=len(total.customers))
    return total


def flush_from_settings(settings=None) -> FlushReport:
    """The scheduler's job: flush the queue of the configured Redis into the configured database."""
    from scrm.config import get_settings
    from scrm.db import get_engine
    from scrm.layers.notify import relayer_notifier
    from scrm.redisserver import get_redis, redis_url

    settings = settings or get_settings()
    redis = get_redis(redis_url(settings))
    return flush_until_empty(get_engine(settings.database_url()), redis,
                             window=dt.timedelta(hours=settings.clicks.unique_window_hours),
                             batch=settings.clicks.flush_batch, on_customers=relayer_notifier(redis, settings))

"""Recording a click on ``/t/{code}`` without slowing the redirect.

The request does no database write: the link's URL comes from an in-process cache (a short TTL,
so a lookup per code per minute at most), the click's facts are computed in memory
(:func:`scrm.clicks.events.click_facts`) and pushed to Redis with one RPUSH; the write-behind
(:mod:`scrm.clicks.flush`) stores and counts them. When Redis is away the click is written to the
database directly (slower, but nothing is lost; a warning is logged, and Redis is not asked again
for a few seconds so every request does not wait for it to fail). When both are away the
customer is still redirected and the click is lost: an error names the code. Without a Redis
client (tests, a deployment without Redis) every click is written directly.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping
from zoneinfo import ZoneInfo

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from scrm.clicks.counting import DEFAULT_WINDOW
from scrm.clicks.events import click_facts
from scrm.clicks.queue import QUEUE_KEY, ClickRecord, encode_click
from scrm.clicks.store import write_clicks
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.sop.links import MAX_CODE_CHARS, link_url

log = get_logger(__name__)

# Only these request headers matter to the agent rule (prefetch hints); the rest are not copied.
PREFETCH_HEADERS = ("purpose", "sec-purpose", "x-moz", "x-purpose")


def click_queue_redis(url: str) -> Redis:
    """The client ``/t/`` pushes with: short timeouts and no retries (redis-py's default retries
    with backoff for seconds, which a customer waiting for a redirect would feel; a failed push
    goes to the database instead, and a retried push could queue the click twice)."""
    return Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))


class LinkLookupFailed(Exception):
    """The link's URL is not cached and the database cannot be asked: the redirect cannot happen."""


class LinkCache:
    """code → URL (or None for an unknown code) for ``ttl`` seconds; unknown codes for less, so a
    link is found soon after it is made. Cleared whole past ``max_size`` (random codes from a
    scanner must not grow it without bound)."""

    def __init__(self, lookup: Callable[[str], str | None], *, ttl: float = 60.0, miss_ttl: float = 5.0,
                 max_size: int = 20_000, monotonic: Callable[[], float] = time.monotonic):
        self._lookup, self._ttl, self._miss_ttl, self._max = lookup, ttl, miss_ttl, max_size
        self._monotonic = monotonic
        self._entries: dict[str, tuple[str | None, float]] = {}

    def cached(self, code: str) -> str | None:
        """The URL of ``code`` if a fresh entry holds one, else None (never asks the database: the
        ASGI fast path of ``/t/`` leaves misses, unknown codes and expiries to the FastAPI route)."""
        hit = self._entries.get(code)
        if hit is not None and hit[1] > self._monotonic():
            return hit[0]
        return None

    def url(self, code: str) -> str | None:
        now = self._monotonic()
        hit = self._entries.get(code)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            url = self._lookup(code)
        except SQLAlchemyError as exc:
            raise LinkLookupFailed(f"{type(exc).__name__}") from exc
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[code] = (url, now + (self._ttl if url is not None else self._miss_ttl))
        return url


class ClickRecorder:
    """The fast path of ``/t/{code}``: ``url`` then ``record``; built once per app."""

    def __init__(self, engine: Engine, redis: Redis | None, *, secret: str | bytes, tz: ZoneInfo,
                 window: dt.timedelta = DEFAULT_WINDOW, clock: Callable[[], dt.datetime] = utcnow,
                 redis_retry_seconds: float = 5.0, links: LinkCache | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.engine, self.redis, self.secret, self.tz, self.window, self.clock = (
            engine, redis, secret, tz, window, clock)
        self.links = links or LinkCache(lambda code: link_url(engine, code))
        self._retry_seconds, self._monotonic = redis_retry_seconds, monotonic
        self._redis_down_until = 0.0

    def queue_ready(self) -> bool:
        """Whether :meth:`queue` would try Redis now (a client, and not inside a back-off)."""
        return self.redis is not None and self._monotonic() >= self._redis_down_until

    def url(self, code: str) -> str | None:
        """The real page behind ``code``, None for an unknown code; :class:`LinkLookupFailed`."""
        if not code or len(code) > MAX_CODE_CHARS:
            return None
        return self.links.url(code)

    def prepare(self, code: str, *, user_agent: str | None, headers: Mapping[str, str], method: str,
                client_ip: str | None, token: str | None) -> tuple[str, ClickRecord]:
        """One click of a known code as its queue element and its record (for the database when
        the element cannot be queued); no I/O."""
        now = self.clock()
        facts = click_facts(secret=self.secret, user_agent=user_agent, headers=headers, method=method,
                            client_ip=client_ip, token=token, now=now, day=now.astimezone(self.tz).date())
        event_id = uuid.uuid4().hex
        verdict = facts.verdict
        refusal = facts.token_refusal
        element = encode_click(event_id, code, now, facts.visitor, verdict.agent, verdict.reason,
                               facts.external_userid, refusal)
        return element, ClickRecord(event_id, code, now.astimezone(dt.UTC), facts.visitor, verdict.agent,
                                    verdict.reason, facts.external_userid, refusal)

    def push(self, elements: list[str], *, code: str) -> bool:
        """RPUSH ``elements`` (one command); False when Redis failed (then it is not asked again
        for ``redis_retry_seconds``: :meth:`queue_ready` is False). Never raises."""
        redis = self.redis
        if redis is None:
            return False
        try:
            redis.rpush(QUEUE_KEY, *elements)
            return True
        except RedisError as exc:
            self._redis_down_until = self._monotonic() + self._retry_seconds
            log.warning("click_queue_unavailable", code=code, clicks=len(elements), error=type(exc).__name__,
                        fallback="database", retry_after_s=self._retry_seconds)
            return False

    def queue(self, code: str, *, user_agent: str | None, headers: Mapping[str, str], method: str,
              client_ip: str | None, token: str | None) -> ClickRecord | None:
        """Push one click of a known code to Redis (one RPUSH, no database); the record when it
        could not be queued, for :meth:`write_directly`. Never raises."""
        element, record = self.prepare(code, user_agent=user_agent, headers=headers, method=method,
                                       client_ip=client_ip, token=token)
        if self.queue_ready() and self.push([element], code=code):
            return None
        return record

    def write_directly(self, record: ClickRecord) -> None:
        """The fallback: this one click into the database now; logged (and lost) when that fails too."""
        try:
            write_clicks(self.engine, [record], self.window)
            log.info("click_written_directly", code=record.code, event_id=record.event_id)
        except SQLAlchemyError as exc:
            log.error("click_lost", code=record.code, event_id=record.event_id, error=type(exc).__name__,
                      detail="neither Redis nor the database took the click; the customer was redirected")

    def record(self, code: str, *, user_agent: str | None, headers: Mapping[str, str], method: str,
               client_ip: str | None, token: str | None) -> None:
        """:meth:`queue`, else :meth:`write_directly` (for synchronous callers)."""
        record = self.queue(code, user_agent=user_agent, headers=headers, method=method, client_ip=client_ip,
                            token=token)
        if record is not None:
            self.write_directly(record)

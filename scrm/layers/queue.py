"""The debounce between events and the re-layer: events mark customers dirty in a Redis set, and
only the first mark of a quiet period schedules a drain ``debounce_seconds`` later, so a burst of
orders, clicks, joins and deletes for the same customers is one job, not one per event.

Keys (``key_prefix`` default ``scrm:layers``): ``:dirty`` the set of external_userids waiting,
``:scheduled`` present while a drain is scheduled (SET NX PX, with a TTL so a lost job does not
stop scheduling for good). A drain pops a batch, clears the flag, and schedules the next drain at
once when ids remain, so the backlog drains batch by batch and a mark during a drain is never
stranded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis as redis_lib

from scrm.logs import get_logger

log = get_logger(__name__)

_GRACE_MS = 300_000  # a scheduled drain not started this long after its delay is taken as lost


class RelayerQueueUnavailable(RuntimeError):
    """Redis refused or could not be reached: the customers were not marked (the nightly full
    pass catches them up)."""


class RelayerQueue:
    def __init__(self, redis: Any, schedule: Callable[[int], Any], *, debounce_seconds: float,
                 key_prefix: str = "scrm:layers"):
        self.redis = redis
        self.schedule = schedule  # schedule(delay_ms): send the drain job with that delay
        self.delay_ms = int(round(debounce_seconds * 1000))
        self.dirty_key = f"{key_prefix}:dirty"
        self.flag_key = f"{key_prefix}:scheduled"

    def _schedule(self, delay_ms: int) -> bool:
        """Schedule a drain unless one is already; True when this call scheduled it."""
        if not self.redis.set(self.flag_key, "1", nx=True, px=delay_ms + _GRACE_MS):
            return False
        try:
            self.schedule(delay_ms)
        except BaseException:
            self.redis.delete(self.flag_key)  # the next mark tries again
            raise
        return True

    def mark(self, external_userids: Iterable[str]) -> int:
        """Mark customers for a re-layer; returns how many ids were given. Raises
        RelayerQueueUnavailable when Redis is down."""
        ids = list(dict.fromkeys(i for i in external_userids if i))
        if not ids:
            return 0
        try:
            self.redis.sadd(self.dirty_key, *ids)
            scheduled = self._schedule(self.delay_ms)
        except redis_lib.RedisError as exc:
            raise RelayerQueueUnavailable(f"could not mark {len(ids)} customers for re-layering: {exc}") from exc
        log.debug("layers_marked", customers=len(ids), scheduled=scheduled)
        return len(ids)

    def drain(self, batch: int) -> list[str]:
        """Pop up to ``batch`` ids; clear the scheduled flag (so the next mark schedules again) and
        schedule the next drain now when ids remain."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.spop(self.dirty_key, batch)
            pipe.delete(self.flag_key)
            pipe.scard(self.dirty_key)
            popped, _, left = pipe.execute()
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in (popped or []))
        if left:
            self._schedule(0)
        log.debug("layers_drained", customers=len(ids), left=left)
        return ids

    def pending(self) -> int:
        return int(self.redis.scard(self.dirty_key))

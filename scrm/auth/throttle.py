"""Slowing down password guessing: after ``limit`` wrong passwords for one userid within ``window``
seconds, that userid's local sign-in is refused (without checking the password) until the window
that began with the first failure ends; a right password clears the count.

Two stores: :class:`RedisThrottle` (the web app's: shared by every web process, counts survive a
restart of one) and :class:`MemoryThrottle` (one process; tests, and a fallback). The key is the
userid as typed, lower-cased, so unknown userids are throttled like known ones and the throttle does
not tell which exist. A Redis that does not answer lets the attempt through (argon2's cost still
bounds the guessing rate) and logs it: a Redis outage must not lock every admin out."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Protocol

from scrm.logs import get_logger

log = get_logger(__name__)
LIMIT = 5
WINDOW_SECONDS = 15 * 60


class Throttle(Protocol):
    limit: int
    window_seconds: int

    def blocked(self, userid: str) -> bool: ...

    def failed(self, userid: str) -> int: ...

    def reset(self, userid: str) -> None: ...


def _key(userid: str) -> str:
    return userid.strip().lower()


class MemoryThrottle:
    """Counts in this process (lost on restart, not shared between web processes)."""

    MAX_KEYS = 10_000

    def __init__(self, limit: int = LIMIT, window_seconds: int = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_seconds, self.clock = limit, window_seconds, clock
        self._fails: dict[str, tuple[int, float]] = {}  # key -> (count, window start)
        self._lock = threading.Lock()

    def _current(self, key: str, now: float) -> int:
        entry = self._fails.get(key)
        if entry is None:
            return 0
        if now - entry[1] >= self.window_seconds:
            del self._fails[key]
            return 0
        return entry[0]

    def blocked(self, userid: str) -> bool:
        with self._lock:
            return self._current(_key(userid), self.clock()) >= self.limit

    def failed(self, userid: str) -> int:
        key, now = _key(userid), self.clock()
        with self._lock:
            if len(self._fails) >= self.MAX_KEYS:  # many distinct userids: drop the finished windows
                for k in [k for k, (_, start) in self._fails.items() if now - start >= self.window_seconds]:
                    del self._fails[k]
            count = self._current(key, now) + 1
            start = self._fails[key][1] if key in self._fails else now
            self._fails[key] = (count, start)
            return count

    def reset(self, userid: str) -> None:
        with self._lock:
            self._fails.pop(_key(userid), None)


class RedisThrottle:
    """Counts in Redis: ``SET key 0 EX window NX`` starts the window with the first failure and
    ``INCR`` keeps its expiry, so a crash between the two cannot leave a count that never expires."""

    def __init__(self, redis, limit: int = LIMIT, window_seconds: int = WINDOW_SECONDS):
        self.redis, self.limit, self.window_seconds = redis, limit, window_seconds

    @staticmethod
    def _rkey(userid: str) -> str:
        return "scrm:auth:fails:" + hashlib.sha256(_key(userid).encode()).hexdigest()[:32]

    def blocked(self, userid: str) -> bool:
        try:
            return int(self.redis.get(self._rkey(userid)) or 0) >= self.limit
        except Exception as exc:
            log.warning("sign_in_throttle_unavailable", error=type(exc).__name__)
            return False

    def failed(self, userid: str) -> int:
        key = self._rkey(userid)
        try:
            pipe = self.redis.pipeline()
            pipe.set(key, 0, ex=self.window_seconds, nx=True)
            pipe.incr(key)
            return int(pipe.execute()[1])
        except Exception as exc:
            log.warning("sign_in_throttle_unavailable", error=type(exc).__name__)
            return 0

    def reset(self, userid: str) -> None:
        try:
            self.redis.delete(self._rkey(userid))
        except Exception as exc:
            log.warning("sign_in_throttle_unavailable", error=type(exc).__name__)

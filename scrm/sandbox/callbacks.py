"""Posting encrypted, signed callbacks the way WeCom does (reference §1.3-§1.7).

Each try re-seals the same plaintext (new random prefix, new signature), waits at most
``timeout`` seconds, and counts anything but HTTP 200 (or a connection error/timeout) as a
failure; ``tries`` tries in total. Callbacks can be held and delivered later, and any delivered
event can be sent again (a "WeCom retry" of identical plaintext) to exercise dedup.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx
import structlog

from scrm.wecom.crypto import CallbackCrypto

log = structlog.get_logger(__name__)


@dataclass
class Delivery:
    """One event and what happened when it was posted."""

    plaintext: str
    attempts: list[int | str] = field(default_factory=list)  # HTTP status, or the error name
    delivered: bool = False
    held: bool = False

    def as_dict(self) -> dict:
        return {"plaintext": self.plaintext, "attempts": list(self.attempts), "delivered": self.delivered,
                "held": self.held}


class CallbackPoster:
    def __init__(
        self,
        crypto: CallbackCrypto | None,
        url: str = "",
        *,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        tries: int = 3,
        agent_id: int | None = None,
    ):
        self.crypto = crypto
        self.url = url
        self.http = http
        self.timeout = timeout
        self.tries = max(1, int(tries))
        self.agent_id = agent_id
        self.hold = False
        self.queue: list[Delivery] = []
        self.log: list[Delivery] = []
        self._lock = threading.Lock()
        self._own_http: httpx.Client | None = None

    @property
    def enabled(self) -> bool:
        return self.crypto is not None and bool(self.url)

    def _client(self) -> httpx.Client:
        if self.http is not None:
            return self.http
        if self._own_http is None:
            self._own_http = httpx.Client()
        return self._own_http

    def post(self, plaintext: str) -> Delivery:
        d = Delivery(plaintext)
        with self._lock:
            self.log.append(d)
            if self.hold:
                d.held = True
                self.queue.append(d)
                return d
        self._deliver(d)
        return d

    def _deliver(self, d: Delivery) -> None:
        d.held = False
        crypto = self.crypto
        if crypto is None or not self.enabled:
            d.attempts.append("no-callback-configured")
            return
        for _ in range(self.tries):
            params, body = crypto.seal(d.plaintext, agent_id=self.agent_id)
            try:
                resp = self._client().post(
                    self.url, params=params, content=body.encode("utf-8"),
                    headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=self.timeout,
                )
                d.attempts.append(resp.status_code)
                if resp.status_code == 200:
                    d.delivered = True
                    return
            except httpx.HTTPError as exc:
                d.attempts.append(type(exc).__name__)
        log.warning("sandbox.callback_gave_up", url=self.url, attempts=d.attempts)

    def flush(self, concurrency: int = 1) -> list[Delivery]:
        """Deliver held callbacks (hold mode stays as it is): in order, or ``concurrency`` at a
        time, as WeCom's many servers do in a burst."""
        with self._lock:
            pending, self.queue = self.queue, []
        if concurrency <= 1:
            for d in pending:
                self._deliver(d)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(self._deliver, pending))
        return pending

    def redeliver(self, delivery: Delivery | int = -1) -> Delivery:
        """Post an already-sent event again as a new delivery (same plaintext, re-encrypted)."""
        original = self.log[delivery] if isinstance(delivery, int) else delivery
        d = Delivery(original.plaintext)
        with self._lock:
            self.log.append(d)
        self._deliver(d)
        return d

    def close(self) -> None:
        if self._own_http is not None:
            self._own_http.close()
            self._own_http = None

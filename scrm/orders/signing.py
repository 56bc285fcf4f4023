"""The order API's request signature: who may report orders, and replays refused.

The shop signs ``timestamp + "\\n" + nonce + "\\n" + raw body`` with HMAC-SHA256 and the shared
secret, hex-encoded, and sends ``X-Scrm-Timestamp`` (Unix seconds), ``X-Scrm-Nonce`` and
``X-Scrm-Signature``. A timestamp more than the tolerance away from our clock is refused, and a nonce
seen within the window is a replay (kept in Redis with ``SET NX EX`` for twice the tolerance, so
a nonce outlives every timestamp it could be sent with). The nonce is only recorded once the
signature is right, so forged requests cannot use up a shop's nonces."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")
TIMESTAMP = re.compile(r"\d{1,12}")


class SignatureRefused(Exception):
    """``status`` 401 (unsigned, forged, stale), 409 (replayed) or 503 (no secret configured)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class NonceStore(Protocol):
    def first_use(self, nonce: str, ttl_seconds: int) -> bool:
        """True the first time ``nonce`` is seen within ``ttl_seconds``."""
        ...


class RedisNonces:
    def __init__(self, redis, prefix: str = "scrm:orders:nonce:"):
        self.redis, self.prefix = redis, prefix

    def first_use(self, nonce: str, ttl_seconds: int) -> bool:
        return bool(self.redis.set(self.prefix + nonce, b"1", nx=True, ex=ttl_seconds))


def sign(secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The signature a shop sends (also what the tests and the demo use)."""
    message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass
class Verifier:
    secret: str
    nonces: NonceStore
    tolerance_seconds: int = 300
    clock: Callable[[], float] = field(default=time.time)

    def verify(self, timestamp: str | None, nonce: str | None, signature: str | None, body: bytes) -> None:
        """Return when the request is signed, fresh and new; else :class:`SignatureRefused`."""
        if not self.secret:
            raise SignatureRefused(503, "the order API is not configured: set SCRM_ORDERS__SECRET "
                                        "(unsigned orders are never accepted)")
        if not timestamp or not nonce or not signature:
            missing = [h for h, v in (("X-Scrm-Timestamp", timestamp), ("X-Scrm-Nonce", nonce),
                                      ("X-Scrm-Signature", signature)) if not v]
            raise SignatureRefused(401, f"unsigned request: missing {', '.join(missing)}")
        if not TIMESTAMP.fullmatch(timestamp):
            raise SignatureRefused(401, "X-Scrm-Timestamp must be Unix seconds (digits only)")
        if not NONCE.fullmatch(nonce):
            raise SignatureRefused(401, "X-Scrm-Nonce must be 8 to 64 characters of A-Z a-z 0-9 _ -")
        skew = abs(self.clock() - int(timestamp))
        if skew > self.tolerance_seconds:
            raise SignatureRefused(401, f"stale timestamp: {int(skew)} s away from the server's clock "
                                        f"(at most {self.tolerance_seconds} s allowed)")
        expected = sign(self.secret, timestamp, nonce, body)
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise SignatureRefused(401, "bad signature: HMAC-SHA256 of timestamp, nonce and the body "
                                        "with the shared secret does not match")
        if not self.nonces.first_use(nonce, 2 * self.tolerance_seconds):
            raise SignatureRefused(409, "replayed request: this nonce was already used; sign every request "
                                        "with a new nonce")

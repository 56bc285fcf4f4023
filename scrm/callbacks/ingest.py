"""Callback ingest: verify, decrypt, store in the inbox, enqueue. Fast, and loses nothing.

The inbox row is committed before WeCom gets its answer, so an enqueue failure (Redis down) only
delays the event: the relay enqueues rows that are not done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from scrm.callbacks.models import CallbackInbox
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.wecom.crypto import CallbackCrypto, CorpMismatch
from scrm.wecom.events import dedup_key, parse_event

log = get_logger(__name__)


@dataclass(frozen=True)
class Ingested:
    inbox_id: int | None
    duplicate: bool
    enqueued: bool
    event: str
    change_type: str


class Enqueuer:
    """Sends inbox ids to the queue; after a failure it skips Redis for ``cooldown`` seconds so an
    outage costs each callback nothing (the relay catches up)."""

    def __init__(self, send: Callable[[int], None], cooldown: float = 2.0):
        self._send = send
        self.cooldown = cooldown
        self._down_until = 0.0

    def __call__(self, inbox_id: int) -> bool:
        if time.monotonic() < self._down_until:
            return False
        try:
            self._send(inbox_id)
            return True
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            self._down_until = time.monotonic() + self.cooldown
            log.warning("enqueue_failed", inbox_id=inbox_id, error=type(exc).__name__)
            return False


def ingest(
    crypto: CallbackCrypto,
    engine: Engine,
    enqueue: Callable[[int], bool],
    *,
    body: bytes,
    msg_signature: str,
    timestamp: str,
    nonce: str,
) -> Ingested:
    plaintext = crypto.open_envelope(body, msg_signature, timestamp, nonce)
    event = parse_event(plaintext)
    if event.corp_id != crypto.corp_id:
        raise CorpMismatch(f"event is for corp {event.corp_id!r}")
    key = dedup_key(plaintext)
    try:
        with engine.begin() as conn:
            inbox_id = conn.execute(
                insert(CallbackInbox.__table__).values(
                    dedup_key=key,
                    corp_id=event.corp_id,
                    event=event.event[:64],
                    change_type=event.change_type[:64],
                    plaintext=plaintext,
                    received_at=utcnow(),
                    status="pending",
                    attempts=0,
                )
            ).inserted_primary_key[0]
    except IntegrityError:
        log.info("callback_duplicate", dedup_key=key[:16], event_type=event.event, change_type=event.change_type)
        return Ingested(None, True, False, event.event, event.change_type)
    # No second write to record the enqueue: the relay only looks at rows older than
    # relay_after_seconds, so a row that was enqueued just now is left alone either way.
    enqueued = enqueue(inbox_id)
    return Ingested(inbox_id, False, enqueued, event.event, event.change_type)

"""Callback ingest: verify, decrypt, store in the inbox, enqueue. Fast, and loses nothing.

The inbox row is committed before WeCom gets its answer, so an enqueue failure (Redis down) only
delays the event: the relay enqueues rows that are not done.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import anyio
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from scrm.callbacks.models import CallbackInbox
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.wecom.crypto import CallbackCrypto, CorpMismatch
from scrm.wecom.events import dedup_key, parse_event

log = get_logger(__name__)


class Enqueuer:
    """Sends inbox ids to the queue; after a failure it skips Redis for ``cooldown`` seconds so an
    outage costs each callback nothing (the relay catches up)."""

    def __init__(self, send: Callable[[int], None], cooldown: float = 2.0):
        self._send = send
        self.cooldown = cooldown
        self._down_until = 0.0

    def __call__(self, inbox_id: int) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            self._send(inbox_id)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            self._down_until = time.monotonic() + self.cooldown
            log.warning("enqueue_failed", inbox_id=inbox_id, error=type(exc).__name__)


def open_callback(crypto: CallbackCrypto, *, body: bytes, msg_signature: str, timestamp: str, nonce: str) -> dict:
    """Verify, decrypt and parse: the inbox row to store (raises CallbackError subclasses)."""
    plaintext = crypto.open_envelope(body, msg_signature, timestamp, nonce)
    event = parse_event(plaintext)
    if event.corp_id != crypto.corp_id:
        raise CorpMismatch(f"event is for corp {event.corp_id!r}")
    return dict(
        dedup_key=dedup_key(plaintext),
        corp_id=event.corp_id,
        event=event.event[:64],
        change_type=event.change_type[:64],
        plaintext=plaintext,
        status="pending",
        attempts=0,
    )


def store_batch(engine: Engine, rows: list[dict]) -> list[int | None]:
    """Insert rows in one transaction (one commit, one fsync); None marks a duplicate.

    ON CONFLICT DO NOTHING keeps one duplicate from aborting the others in the batch.
    """
    table = CallbackInbox.__table__
    dialect_insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    ids: list[int | None] = []
    with engine.begin() as conn:
        for row in rows:
            stmt = (
                dialect_insert(table)
                .values(**row, received_at=now)
                .on_conflict_do_nothing(index_elements=["dedup_key"])
                .returning(table.c.id)
            )
            ids.append(conn.execute(stmt).scalar())
    return ids


class InboxWriter:
    """Group commit for the receiver: callbacks arriving together share one transaction.

    Each request awaits its row's id; a writer task takes whatever is waiting (up to
    ``max_batch``), stores it in a worker thread, then enqueues the new ids. The answer to WeCom
    is sent only after the commit, so an acknowledged callback is always in the inbox.
    """

    def __init__(self, engine: Engine, enqueue: Callable[[int], None], *, max_batch: int = 256):
        self.engine, self.enqueue, self.max_batch = engine, enqueue, max_batch
        self._loop = None
        self._queue = None

    async def store(self, row: dict) -> int | None:
        """The new inbox id, or None when the callback was stored before (a WeCom retry)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests)
            self._loop, self._queue = loop, asyncio.Queue()
            loop.create_task(self._run(self._queue))
        future = loop.create_future()
        await self._queue.put((row, future))
        return await future

    async def _run(self, queue) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            rows = [row for row, _ in batch]
            try:
                results = await anyio.to_thread.run_sync(self._write, rows)
            except Exception as exc:  # database outage: every waiting request gets the error
                log.error("inbox_write_failed", error=type(exc).__name__, batch=len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _write(self, rows: list[dict]) -> list[int | None]:
        ids = store_batch(self.engine, rows)
        for row, inbox_id in zip(rows, ids):
            if inbox_id is None:
                log.info("callback_duplicate", dedup_key=row["dedup_key"][:16], event_type=row["event"],
                         change_type=row["change_type"])
            else:
                # No write records the enqueue: the relay only looks at rows older than
                # relay_after_seconds, so a row enqueued just now is left alone either way.
                self.enqueue(inbox_id)
        return ids

"""Callback ingest: verify, decrypt, store in the inbox, enqueue. Fast, and loses nothing.

The inbox row is committed before WeCom gets its answer, so an enqueue failure (Redis down) only
delays the event: the relay enqueues rows that are not done.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import anyio
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.wecom.crypto import CallbackCrypto, CorpMismatch
from scrm.wecom.events import dedup_key, parse_event

log = get_logger(__name__)


class Enqueuer:
    """Sends batches of inbox ids to the queue; after a failure it skips Redis for ``cooldown``
    seconds so an outage costs each callback nothing (the relay catches up)."""

    def __init__(self, send_many: Callable[[list[int]], None], cooldown: float = 2.0):
        self._send_many = send_many
        self.cooldown = cooldown
        self._down_until = 0.0

    def __call__(self, inbox_ids: list[int]) -> None:
        if not inbox_ids or time.monotonic() < self._down_until:
            return
        try:
            self._send_many(inbox_ids)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            self._down_until = time.monotonic() + self.cooldown
            log.warning("enqueue_failed", inbox_ids=len(inbox_ids), first_inbox_id=inbox_ids[0],
                        error=type(exc).__name__)


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
        status=InboxStatus.pending,
        attempts=0,
    )


@functools.lru_cache(maxsize=4)
def _insert_statement(dialect_name: str):
    table = CallbackInbox.__table__
    dialect_insert = pg_insert if dialect_name == "postgresql" else sqlite_insert
    return (
        dialect_insert(table)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(table.c.id, table.c.dedup_key)
    )


def store_batch(engine: Engine, rows: list[dict]) -> list[int | None]:
    """Insert rows in one transaction; None marks a duplicate.

    Executed with a parameter list, SQLAlchemy sends one multi-row INSERT ... RETURNING
    ("insertmanyvalues") from a statement it compiles once. ON CONFLICT DO NOTHING keeps a
    duplicate from aborting the others; a callback that appears twice in the same batch is new
    once: its first occurrence gets the id.
    """
    if not rows:
        return []
    now = utcnow()
    with engine.begin() as conn:
        inserted = dict(
            (key, inbox_id)
            for inbox_id, key in conn.execute(_insert_statement(engine.dialect.name),
                                              [{**row, "received_at": now} for row in rows])
        )
    return [inserted.pop(row["dedup_key"], None) for row in rows]


class InboxWriter:
    """Group commit for the receiver: callbacks arriving together share one transaction.

    Each request awaits its row's id; a writer task takes whatever is waiting (up to
    ``max_batch``), stores it in a worker thread, then enqueues the new ids. The answer to WeCom
    is sent only after the commit, so an acknowledged callback is always in the inbox.
    """

    def __init__(self, engine: Engine, enqueue: Callable[[list[int]], None], *, max_batch: int = 256):
        self.engine, self.enqueue, self.max_batch = engine, enqueue, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    async def store(self, row: dict) -> int | None:
        """The new inbox id, or None when the callback was stored before (a WeCom retry)."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        if self._loop is not loop or queue is None:  # first use, or a new event loop (tests)
            queue = asyncio.Queue()
            self._loop, self._queue = loop, queue
            loop.create_task(self._run(queue))
        future = loop.create_future()
        await queue.put((row, future))
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
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _write(self, rows: list[dict]) -> list[int | None]:
        ids = store_batch(self.engine, rows)
        for row, inbox_id in zip(rows, ids, strict=True):
            if inbox_id is None:
                log.info("callback_duplicate", dedup_key=row["dedup_key"][:16], event_type=row["event"],
                         change_type=row["change_type"])
        # No write records the enqueue: the relay only looks at rows older than
        # relay_after_seconds, so a row enqueued just now is left alone either way.
        self.enqueue([inbox_id for inbox_id in ids if inbox_id is not None])
        return ids

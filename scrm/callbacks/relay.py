"""The relay: enqueue inbox rows that are not done some time after they arrived or were last sent.

Covers Redis outages at ingest time and workers that died holding a message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine

from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.db import utcnow
from scrm.logs import get_logger

log = get_logger(__name__)
T = CallbackInbox.__table__


def relay_pending(
    engine: Engine, send: Callable[[int], None], *, older_than_seconds: float, batch: int = 500, max_attempts: int = 10
) -> int:
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with engine.connect() as conn:
        ids = conn.execute(
            select(T.c.id)
            .where(
                T.c.status == InboxStatus.pending,
                T.c.attempts < max_attempts,
                T.c.received_at <= cutoff,
                or_(T.c.enqueued_at.is_(None), T.c.enqueued_at <= cutoff),
            )
            .order_by(T.c.id)
            .limit(batch)
        ).scalars().all()
    sent = 0
    for inbox_id in ids:
        try:
            send(inbox_id)
        except Exception as exc:
            log.warning("relay_enqueue_failed", inbox_id=inbox_id, error=type(exc).__name__, relayed=sent)
            break
        with engine.begin() as conn:
            conn.execute(update(T).where(T.c.id == inbox_id).values(enqueued_at=utcnow()))
        sent += 1
    if sent:
        log.info("relay_enqueued", count=sent)
    return sent


def inbox_backlog(engine: Engine) -> int:
    from sqlalchemy import func

    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(T).where(T.c.status == InboxStatus.pending)).scalar_one()

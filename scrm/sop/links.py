"""Tracked SOP links: a click is counted, then the reader goes on to the real page."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.sop.models import LinkClick, TrackedLink

log = get_logger(__name__)


def record_click(engine: Engine, code: str, now: dt.datetime | None = None) -> str | None:
    """The link's real URL after counting the click, or None for an unknown code."""
    if not code or len(code) > 24:
        return None
    now = now or utcnow()
    table, c = TrackedLink.__table__, TrackedLink.__table__.c
    with engine.begin() as conn:
        url = conn.execute(select(c.url).where(c.code == code)).scalar()
        if url is None:
            return None
        conn.execute(update(table).where(c.code == code).values(clicks=c.clicks + 1, last_clicked_at=now))
        conn.execute(update(table).where(c.code == code, c.first_clicked_at.is_(None)).values(first_clicked_at=now))
        conn.execute(LinkClick.__table__.insert().values(code=code, clicked_at=now))
    log.info("sop_link_clicked", code=code)
    return url

"""Tracked SOP links: the real page behind a ``/t/{code}``.

Clicks are no longer written here: ``/t/{code}`` queues them (:mod:`scrm.clicks.recording`) and
the write-behind stores and counts them (:mod:`scrm.clicks.flush`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from scrm.sop.models import TrackedLink

MAX_CODE_CHARS = 24


def link_url(engine: Engine, code: str) -> str | None:
    """The link's real URL, or None for an unknown (or impossible) code."""
    if not code or len(code) > MAX_CODE_CHARS:
        return None
    c = TrackedLink.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(c.url).where(c.code == code)).scalar()

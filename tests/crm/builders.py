"""Helpers for the follow-up, service and quality tests: write ``crm_messages`` rows directly (the
table contract of scrm/crm/models.py, not the ingest) and read back what a rebuild stored."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scrm.config import CrmSettings
from scrm.crm.lint import load_rules
from scrm.crm.models import CrmMessage, FollowUp, FollowUpEdit, ServiceEvent

RULES_DIR = Path(__file__).resolve().parents[2] / "crm"
TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
_ids = itertools.count(1)


def rules():
    return load_rules(RULES_DIR)


def settings(**kw: Any) -> CrmSettings:
    return CrmSettings(rules_dir=RULES_DIR, **kw)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    """A Shanghai wall-clock time as aware UTC."""
    return dt.datetime(y, mo, d, h, mi, tzinfo=TZ).astimezone(dt.UTC)


def msg(ext: str | None, at: dt.datetime, text: str = "", *, out: bool = False, userid: str | None = None,
        channel: str = "chat", msgtype: str | None = None, revoked: bool = False, id: int | None = None,
        source_id: str | None = None, payload: dict | None = None) -> dict[str, Any]:
    """A crm_messages row (inbound unless ``out``)."""
    n = next(_ids)
    return dict(id=id, channel=channel, source_id=source_id or f"src{n}", external_userid=ext, mobile=None,
                userid=userid if userid is not None else ("rep1" if out else None),
                direction="out" if out else "in", sent_at=at,
                msgtype=msgtype or ("text" if channel == "chat" else channel),
                content="" if revoked else text, payload=payload or {}, roomid=None, duration_seconds=None,
                revoked_at=at if revoked else None, created_at=at)


def insert(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows (their ``id`` given or assigned) and return the ids in order."""
    out = []
    with engine.begin() as conn:
        for row in rows:
            data = {k: v for k, v in row.items() if not (k == "id" and v is None)}
            res = conn.execute(sa.insert(CrmMessage.__table__).values(**data).returning(CrmMessage.__table__.c.id))
            out.append(res.scalar_one())
    return out


def revoke(engine: Engine, message_id: int, at: dt.datetime, *, created_at: dt.datetime | None = None) -> None:
    """What the ingest does for a recall: blank the message and add the revoke row (imported at
    ``created_at``, default the wall clock)."""
    t = CrmMessage.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.id == message_id).values(content="", payload={}, revoked_at=at))
        row = conn.execute(sa.select(t).where(t.c.id == message_id)).one()
        conn.execute(sa.insert(t).values(channel=row.channel, source_id=f"revoke-{message_id}",
                                         external_userid=row.external_userid, userid=row.userid,
                                         direction=row.direction, sent_at=at, msgtype="revoke", content="",
                                         payload={"pre_msgid": row.source_id},
                                         **({"created_at": created_at} if created_at else {})))


def rows_of(engine: Engine, model: Any) -> list[tuple]:
    """Every row of a table, as tuples sorted by id (to compare before and after)."""
    t = model.__table__
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.id))]


def followups(engine: Engine, ext: str) -> list[Any]:
    t = FollowUp.__table__
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t).where(t.c.external_userid == ext).order_by(t.c.started_at)))


def events(engine: Engine, ext: str | None = None) -> list[Any]:
    t = ServiceEvent.__table__
    q = sa.select(t).order_by(t.c.occurred_at, t.c.id)
    if ext:
        q = q.where(t.c.external_userid == ext)
    with engine.connect() as conn:
        return list(conn.execute(q))


ALL_TABLES = (FollowUpEdit, ServiceEvent, FollowUp, CrmMessage)

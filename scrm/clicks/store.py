"""Clicks into the database: one transaction per batch, decided against the stored state.

``write_clicks`` is the only writer of ``link_clicks``, ``click_visitor_state`` and the link
counters, used by the flush (batches from Redis) and by ``/t/`` itself when Redis is away (one
click). Writers are serialised by the database (a transaction-scoped advisory lock on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so two of them never decide the same visitor from the
same stale state, and records whose ``event_id`` is already stored are skipped before deciding:
a batch written once and then retried (the flusher died before clearing Redis) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, case, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from scrm.clicks.agents import AgentClass
from scrm.clicks.counting import CountReason, count_clicks
from scrm.clicks.models import ClickVisitorState
from scrm.clicks.queue import ClickRecord
from scrm.db import as_utc
from scrm.sop.models import LinkClick, TrackedLink

_LOCK_KEY = zlib.crc32(b"scrm:clicks:write")
_CHUNK = 500  # rows per IN (...) list: well inside SQLite's and PostgreSQL's parameter limits


@dataclass
class WriteResult:
    written: int = 0  # link_clicks rows inserted
    already_written: int = 0  # records whose event_id was stored before (a retried batch)
    reasons: dict[CountReason, int] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        return self.reasons.get(CountReason.COUNTED, 0)


def _serialise(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before the first read


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _stored_event_ids(conn: Connection, ids: list[str]) -> set[str]:
    if conn.dialect.name == "postgresql":
        return set(conn.execute(text("SELECT event_id FROM link_clicks WHERE event_id = ANY(CAST(:ids AS text[]))"),
                                {"ids": ids}).scalars())
    c = LinkClick.__table__.c
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(conn.execute(select(c.event_id).where(c.event_id.in_(chunk))).scalars())
    return found


def _load_state(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dt.datetime]:
    state: dict[tuple[str, str], dt.datetime] = {}
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text(
            "SELECT s.code, s.visitor, s.last_counted_at FROM click_visitor_state AS s"
            " JOIN unnest(CAST(:codes AS text[]), CAST(:visitors AS text[])) AS k(code, visitor)"
            " ON s.code = k.code AND s.visitor = k.visitor"),
            {"codes": [k[0] for k in keys], "visitors": [k[1] for k in keys]})
        return {(code, visitor): as_utc(at) for code, visitor, at in rows}
    c = ClickVisitorState.__table__.c
    for chunk in _chunks(keys):
        rows = conn.execute(select(c.code, c.visitor, c.last_counted_at)
                            .where(tuple_(c.code, c.visitor).in_(chunk)))
        for code, visitor, at in rows:
            state[(code, visitor)] = as_utc(at)
    return state


def _upsert_state(conn: Connection, changed: dict[tuple[str, str], dt.datetime]) -> None:
    if not changed:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text(
            "INSERT INTO click_visitor_state (code, visitor, last_counted_at)"
            " SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:visitors AS text[]), CAST(:ats AS timestamptz[]))"
            " ON CONFLICT (code, visitor) DO UPDATE SET last_counted_at = EXCLUDED.last_counted_at"),
            {"codes": [k[0] for k in changed], "visitors": [k[1] for k in changed], "ats": list(changed.values())})
        return
    table = ClickVisitorState.__table__
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.code, table.c.visitor],
                                      set_={"last_counted_at": stmt.excluded.last_counted_at})
    conn.execute(stmt, [{"code": code, "visitor": visitor, "last_counted_at": at}
                        for (code, visitor), at in changed.items()])


def _update_links(conn: Connection, per_code: dict[str, list]) -> None:
    if not per_code:
        return
    if conn.dialect.name == "postgresql":
        items = sorted(per_code.items())
        conn.execute(text(
            "UPDATE tracked_links AS t SET clicks = t.clicks + v.n, unique_clicks = t.unique_clicks + v.u,"
            " first_clicked_at = CASE WHEN t.first_clicked_at IS NULL OR t.first_clicked_at > v.f"
            " THEN v.f ELSE t.first_clicked_at END,"
            " last_clicked_at = CASE WHEN t.last_clicked_at IS NULL OR t.last_clicked_at < v.l"
            " THEN v.l ELSE t.last_clicked_at END"
            " FROM unnest(CAST(:codes AS text[]), CAST(:n AS integer[]), CAST(:u AS integer[]),"
            " CAST(:f AS timestamptz[]), CAST(:l AS timestamptz[])) AS v(code, n, u, f, l)"
            " WHERE t.code = v.code"),
            {"codes": [c for c, _ in items], "n": [a[0] for _, a in items], "u": [a[1] for _, a in items],
             "f": [a[2] for _, a in items], "l": [a[3] for _, a in items]})
        return
    c = TrackedLink.__table__.c
    first, last = bindparam("b_first", type_=c.first_clicked_at.type), bindparam("b_last", type_=c.last_clicked_at.type)
    stmt = (update(TrackedLink.__table__).where(c.code == bindparam("b_code")).values(
        clicks=c.clicks + bindparam("b_clicks"),
        unique_clicks=c.unique_clicks + bindparam("b_unique"),
        first_clicked_at=case((c.first_clicked_at.is_(None) | (c.first_clicked_at > first), first),
                              else_=c.first_clicked_at),
        last_clicked_at=case((c.last_clicked_at.is_(None) | (c.last_clicked_at < last), last),
                             else_=c.last_clicked_at),
    ))
    conn.execute(stmt, [{"b_code": code, "b_clicks": n, "b_unique": u, "b_first": f, "b_last": la}
                        for code, (n, u, f, la) in sorted(per_code.items())])


_ROW_COLUMNS = ("event_id", "code", "clicked_at", "visitor", "agent", "agent_reason", "reason", "counted",
                "external_userid")
_ROW_TYPES = ("text", "text", "timestamptz", "text", "text", "text", "text", "boolean", "text")


def _insert_rows(conn: Connection, rows: list[dict]) -> None:
    """The batch's ``link_clicks`` rows; on PostgreSQL one INSERT … SELECT FROM unnest(arrays) (a
    statement per batch instead of a page of VALUES per few hundred rows)."""
    if conn.dialect.name != "postgresql":
        conn.execute(LinkClick.__table__.insert(), rows)
        return
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in zip(_ROW_COLUMNS, _ROW_TYPES, strict=True))
    conn.execute(text(f"INSERT INTO link_clicks ({', '.join(_ROW_COLUMNS)}) SELECT * FROM unnest({arrays})"),
                 {name: [row[name] for row in rows] for name in _ROW_COLUMNS})


def write_clicks(engine: Engine, records: Iterable[ClickRecord], window: dt.timedelta) -> WriteResult:
    """Write a batch of clicks in one transaction (all or nothing); a database error propagates
    and nothing of the batch is stored."""
    unique: dict[str, ClickRecord] = {}
    for r in records:
        unique.setdefault(r.event_id, r)  # a push retried by the Redis client: one click
    result = WriteResult()
    if not unique:
        return result
    with engine.connect() as conn:
        _serialise(conn)
        stored = _stored_event_ids(conn, list(unique))
        fresh = [r for r in unique.values() if r.event_id not in stored]
        result.already_written = len(unique) - len(fresh)
        if not fresh:
            conn.commit()
            return result
        keys = sorted({(r.code, r.visitor) for r in fresh if r.agent is AgentClass.PERSON})
        counted = count_clicks((r.event() for r in fresh), _load_state(conn, keys), window)
        rows = []
        per_code: dict[str, list] = {}
        reasons: dict[CountReason, int] = defaultdict(int)
        for r, d in zip(fresh, counted.decisions, strict=True):
            reasons[d.reason] += 1
            rows.append({"event_id": r.event_id, "code": r.code, "clicked_at": r.at, "visitor": r.visitor,
                         "agent": r.agent.value, "agent_reason": r.agent_reason.value, "reason": d.reason.value,
                         "counted": d.counted, "external_userid": r.external_userid})
            if r.agent is AgentClass.PERSON:
                agg = per_code.get(r.code)
                if agg is None:
                    per_code[r.code] = [1, int(d.counted), r.at, r.at]
                else:
                    agg[0] += 1
                    agg[1] += int(d.counted)
                    agg[2] = min(agg[2], r.at)
                    agg[3] = max(agg[3], r.at)
        _insert_rows(conn, rows)
        _upsert_state(conn, counted.changed)
        _update_links(conn, per_code)
        conn.commit()
    result.written = len(rows)
    result.reasons = dict(reasons)
    return result

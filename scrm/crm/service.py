"""Building and reading follow-up records (contract: the signatures below are what the CLI, the
workers and the pages call).

A rebuild reads a batch of customers' messages in one query, runs the pure builder
(:mod:`scrm.crm.followups`) and writes only the difference: a record whose content is unchanged is
not touched, a record whose anchor (first message) is no longer a session start is deleted, new
ones are inserted; a customer's service events are replaced only when they differ. A rebuild with
nothing new writes nothing.

A rep's edit is kept apart (``crm_followup_edits``), anchored on a message: whichever rebuilt
record contains that message shows it, so an edit survives sessions merging or splitting.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from scrm.config import CrmSettings
from scrm.crm.followups import CONTENT_FIELDS, BusinessHours, Event, Msg, Record, build
from scrm.crm.models import CrmMessage, FollowUp, FollowUpEdit, ServiceEvent
from scrm.crm.rules import CrmRules
from scrm.db import as_utc
from scrm.logs import get_logger

log = get_logger(__name__)

M = CrmMessage.__table__
F = FollowUp.__table__
E = FollowUpEdit.__table__
S = ServiceEvent.__table__

EDITABLE = ("first_question", "last_reply", "open_questions", "next_step")
NOTE_MAX = 2000
TEXT_MAX = {"first_question": 1000, "last_reply": 1000, "next_step": 512}
OPEN_QUESTIONS_MAX = 50
OPEN_QUESTION_TEXT_MAX = 500
_IN_CHUNK = 1000  # ids per IN (...) list


@dataclass(frozen=True)
class RecordView:
    """A follow-up record as a rep reads it: the built record with their edit applied."""

    record: FollowUp  # as built (never changed by an edit)
    first_question: str  # these four: the built value, or the rep's correction
    last_reply: str
    open_questions: list[dict[str, Any]]
    next_step: str
    note: str = ""  # the rep's note, "" when none
    corrected: frozenset[str] = frozenset()  # names of the fields a rep corrected
    edited_by: str | None = None
    edited_at: dt.datetime | None = None


@dataclass
class RebuildReport:
    customers: int = 0  # customers rebuilt
    records: int = 0  # records they have now
    created: int = 0  # records new since the last build
    removed: int = 0  # records gone (sessions merged or all messages recalled)
    events: int = 0  # service-quality events written
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # ids given with no messages
    updated: int = 0  # records whose content changed
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step: load, build, write
    skipped: int = 0  # rebuild_all(only_changed): customers left alone (nothing their records could show changed)

    def add_step(self, name: str, seconds: float) -> None:
        self.steps[name] = self.steps.get(name, 0.0) + seconds


class EditRefused(Exception):
    """The edit names no record of this customer, or a field that cannot be corrected (Chinese message)."""


# --------------------------------------------------------------------------------------------
# Rebuild


def _rules(settings: CrmSettings, rules_dir: str | Path | None) -> CrmRules:
    from scrm.crm.lint import load_rules

    return load_rules(rules_dir if rules_dir is not None else settings.rules_dir)


def business_hours(settings: CrmSettings, tz: dt.tzinfo) -> BusinessHours:
    return BusinessHours.parse(settings.business_hours, settings.business_days, tz)


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _where(col: Any, ids: Sequence[str], bounds: tuple[str, str] | None) -> Any:
    """Rows of these customers: a key range when the batch is every customer in it (an index range
    scan), else IN lists."""
    if bounds is not None:
        return col.between(*bounds)
    return sa.or_(*(col.in_(list(c)) for c in _chunks(ids))) if ids else sa.false()


def _load_messages(conn: Connection, ids: Sequence[str], bounds: tuple[str, str] | None) -> dict[str, list[Msg]]:
    rows = conn.execute(
        sa.select(M.c.external_userid, M.c.id, M.c.channel, M.c.direction, M.c.sent_at, M.c.msgtype, M.c.content,
                  M.c.userid, M.c.revoked_at)
        .where(_where(M.c.external_userid, ids, bounds))
    )
    out: dict[str, list[Msg]] = defaultdict(list)
    for e, mid, ch, d, at, mt, content, uid, revoked in rows:
        out[e].append(Msg(id=mid, channel=ch, direction=d, sent_at=as_utc(at), msgtype=mt, content=content or "",
                          userid=uid, revoked=revoked is not None))
    return out


def _stored_content(row: Any) -> dict[str, Any]:
    out = {k: getattr(row, k) for k in CONTENT_FIELDS}
    out["started_at"] = as_utc(out["started_at"])
    out["ended_at"] = as_utc(out["ended_at"])
    return out


def _event_row(e: Event, external_userid: str, store: str | None) -> dict[str, Any]:
    return dict(external_userid=external_userid, userid=e.userid, store_code=store, kind=str(e.kind),
                message_id=e.message_id, occurred_at=e.occurred_at, replied_at=e.replied_at,
                business_seconds=e.business_seconds, rule_id=e.rule_id, phrase=e.phrase, excerpt=e.excerpt)


def _event_key(row: Mapping[Any, Any]) -> tuple:
    return (row["kind"], row["message_id"], as_utc(row["occurred_at"]), row["userid"], as_utc(row["replied_at"]),
            row["business_seconds"], row["rule_id"], row["phrase"], row["excerpt"], row["store_code"])


_EVENT_COLS = ("kind", "message_id", "occurred_at", "userid", "replied_at", "business_seconds", "rule_id", "phrase",
               "excerpt", "store_code")


def _rebuild_batch(conn: Connection, ids: Sequence[str], bounds: tuple[str, str] | None, *, rules: CrmRules,
                   settings: CrmSettings, hours: BusinessHours, now: dt.datetime, report: RebuildReport) -> None:
    clock = time.perf_counter()
    messages = _load_messages(conn, ids, bounds)
    existing: dict[str, dict[int, Any]] = defaultdict(dict)
    for row in conn.execute(sa.select(F).where(_where(F.c.external_userid, ids, bounds))):
        existing[row.external_userid][row.first_message_id] = row
    old_events: dict[str, list[tuple]] = defaultdict(list)
    for row in conn.execute(sa.select(S.c.external_userid, *(S.c[c] for c in _EVENT_COLS))
                            .where(_where(S.c.external_userid, ids, bounds))):
        old_events[row.external_userid].append(_event_key(row._mapping))
    from scrm.layers.models import CustomerLayer

    L = CustomerLayer.__table__
    stores = dict(conn.execute(sa.select(L.c.external_userid, L.c.home_store)
                               .where(_where(L.c.external_userid, ids, bounds))).all())
    everyone = sorted(set(ids) | set(messages) | set(existing) | set(old_events))
    report.add_step("load", time.perf_counter() - clock)
    clock = time.perf_counter()

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    deletes: list[int] = []
    event_rows: list[dict[str, Any]] = []
    replace_events: list[str] = []
    for ext in everyone:
        own = messages.get(ext, [])
        if not own:
            if ext in ids and bounds is None:
                report.missing.append(ext)
        else:
            report.customers += 1
        built = build(own, rules, session_gap_hours=settings.session_gap_hours, hours=hours, now=now)
        before = existing.get(ext, {})
        report.records += len(built.records)
        for record in built.records:
            row = before.pop(record.first_message_id, None)
            if row is None:
                inserts.append(dict(external_userid=ext, built_at=now, **record.content()))
            elif _stored_content(row) != record.content():
                updates.append(dict(_id=row.id, built_at=now, **record.content()))
        deletes.extend(row.id for row in before.values())
        store = stores.get(ext)
        new_events = [_event_row(e, ext, store) for e in built.events]
        if Counter(_event_key(r) for r in new_events) != Counter(old_events.get(ext, [])):
            replace_events.append(ext)
            event_rows.extend(new_events)
    report.add_step("build", time.perf_counter() - clock)
    clock = time.perf_counter()
    if deletes:
        for chunk in _chunks(deletes):  # type: ignore[arg-type]
            conn.execute(sa.delete(F).where(F.c.id.in_(list(chunk))))
    if updates:
        conn.execute(sa.update(F).where(F.c.id == sa.bindparam("_id")),
                     updates)
    if inserts:
        _bulk_insert(conn, F, inserts)
    if replace_events:
        for chunk in _chunks(replace_events):
            conn.execute(sa.delete(S).where(S.c.external_userid.in_(list(chunk))))
        if event_rows:
            _bulk_insert(conn, S, event_rows)
    report.add_step("write", time.perf_counter() - clock)
    report.created += len(inserts)
    report.updated += len(updates)
    report.removed += len(deletes)
    report.events += len(event_rows)


_COPY_FROM = 200  # rows: from this many, PostgreSQL gets them by COPY


def _bulk_insert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows: COPY on PostgreSQL (a first build writes ~1 row per message; COPY is
    several times faster than multi-row INSERTs), executemany elsewhere."""
    if conn.dialect.name != "postgresql" or len(rows) < _COPY_FROM:
        conn.execute(sa.insert(table), rows)
        return
    cols = [c for c in table.columns if c.name != "id"]
    as_json = {c.name for c in cols if isinstance(c.type, sa.JSON)}
    names = ", ".join(f'"{c.name}"' for c in cols)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row([json.dumps(row[c.name], ensure_ascii=False) if c.name in as_json else row.get(c.name)
                            for c in cols])


def _run_batch(engine: Engine, ids: Sequence[str], bounds: tuple[str, str] | None, total: RebuildReport,
               **kw: Any) -> None:
    """One batch in one transaction; a clash with a concurrent rebuild of the same customers
    (the unique anchor) retries the batch once on what that rebuild wrote."""
    for attempt in (1, 2):
        part = RebuildReport()
        try:
            with engine.begin() as conn:
                _rebuild_batch(conn, ids, bounds, report=part, **kw)
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("crm_rebuild_retry", customers=len(ids))
            continue
        for name in ("customers", "records", "created", "removed", "events", "updated"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.missing.extend(part.missing)
        for name, seconds in part.steps.items():
            total.add_step(name, seconds)
        return


def rebuild_customers(engine: Engine, external_userids: Iterable[str], *, now: dt.datetime,
                      settings: CrmSettings, tz: dt.tzinfo, rules_dir: str | Path | None = None,
                      rules: CrmRules | None = None) -> RebuildReport:
    """Rebuild the records and service events of these customers from their messages (idempotent:
    a rebuild with nothing new writes nothing). ``rules_dir`` None: ``settings.rules_dir``."""
    started = time.perf_counter()
    rules = rules or _rules(settings, rules_dir)
    hours = business_hours(settings, tz)
    ids = sorted({i for i in external_userids if i})
    report = RebuildReport()
    for i in range(0, len(ids), settings.rebuild_batch):
        _run_batch(engine, ids[i:i + settings.rebuild_batch], None, rules=rules, settings=settings, hours=hours,
                   now=now, total=report)
    report.seconds = time.perf_counter() - started
    log.info("crm_rebuild", customers=report.customers, records=report.records, created=report.created,
             updated=report.updated, removed=report.removed, events=report.events, missing=len(report.missing),
             seconds=round(report.seconds, 3))
    return report


def _all_customers(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        ids = set(conn.execute(sa.select(M.c.external_userid).where(M.c.external_userid.is_not(None)).distinct())
                  .scalars())
        ids |= set(conn.execute(sa.select(F.c.external_userid).distinct()).scalars())
        ids |= set(conn.execute(sa.select(S.c.external_userid).distinct()).scalars())
    return sorted(ids)


def _clock_steps(rules: CrmRules) -> list[tuple[int, dt.timedelta]]:
    """(position, hours) of the next-step rules that time alone can make hold (``no_reply_hours``)."""
    return [(i, dt.timedelta(hours=s.when.no_reply_hours)) for i, s in enumerate(rules.next_steps)
            if s.when.no_reply_hours is not None]


def _changed_customers(conn: Connection, rules: CrmRules, now: dt.datetime) -> tuple[set[str], set[str]]:
    """(customers whose records a rebuild could change now, every customer with messages or records).

    A customer is picked when:

    - the live messages (not recalled, not a recall row) differ in number from what their records
      count (``sum(message_count)``): a message arrived or was linked, or one was recalled;
    - a message row was created after their newest record was built (a message and a recall in
      the same day leave the count equal);
    - a service event names another store than their layer's home store (the store moved);
    - the clock: a record whose session ends with a customer message, built before a
      ``no_reply_hours`` step (placed before the step the record shows) could hold, when it holds
      by ``now`` (a recalled last message: whenever it was built that early).

    Not seen: a change of the rules or of the business-hours settings (``rebuild_all(...,
    only_changed=False)``, ``scrm crm rebuild --all``)."""
    live = sa.case((sa.and_(M.c.msgtype != "revoke", M.c.revoked_at.is_(None)), 1), else_=0)
    counted: dict[str, tuple[int, Any]] = {
        e: (int(n or 0), as_utc(created)) for e, n, created in conn.execute(
            sa.select(M.c.external_userid, sa.func.sum(live), sa.func.max(M.c.created_at))
            .where(M.c.external_userid.is_not(None)).group_by(M.c.external_userid))}
    covered: dict[str, tuple[int, Any]] = {
        e: (int(n or 0), as_utc(built)) for e, n, built in conn.execute(
            sa.select(F.c.external_userid, sa.func.sum(F.c.message_count), sa.func.max(F.c.built_at))
            .group_by(F.c.external_userid))}
    everyone = set(counted) | set(covered)
    changed: set[str] = set()
    for ext in everyone:
        n, created = counted.get(ext, (0, None))
        m, built = covered.get(ext, (0, None))
        if n != m or (created is not None and built is not None and created > built):
            changed.add(ext)
    from scrm.layers.models import CustomerLayer

    L = CustomerLayer.__table__
    changed.update(conn.execute(
        sa.select(S.c.external_userid).distinct()
        .select_from(S.outerjoin(L, L.c.external_userid == S.c.external_userid))
        .where(S.c.store_code.is_distinct_from(L.c.home_store))).scalars())
    clock = _clock_steps(rules)
    if clock:
        longest = max(h for _, h in clock)
        position = {s.id: i for i, s in enumerate(rules.next_steps)}
        if conn.dialect.name == "postgresql":
            early = F.c.built_at < F.c.ended_at + sa.func.make_interval(
                0, 0, 0, 0, 0, 0, sa.literal(longest.total_seconds(), sa.Float))
        else:
            early = sa.func.julianday(F.c.built_at) < sa.func.julianday(F.c.ended_at) + longest.total_seconds() / 86400
        rows = conn.execute(
            sa.select(F.c.external_userid, F.c.ended_at, F.c.built_at, F.c.next_step_rule, M.c.revoked_at)
            .select_from(F.join(M, M.c.id == F.c.last_message_id))
            .where(M.c.direction == "in", early))
        for ext, ended, built, rule, revoked in rows:
            if ext in changed:
                continue
            shown = len(rules.next_steps) if rule is None else position.get(rule, -1)
            if shown < 0:
                changed.add(ext)  # a rule that is gone: the rules changed
                continue
            ended, built = as_utc(ended), as_utc(built)
            for i, hours in clock:
                if i < shown and built < ended + hours and (revoked is not None or ended + hours <= now):
                    changed.add(ext)
                    break
    return changed, everyone


def rebuild_all(engine: Engine, *, now: dt.datetime, settings: CrmSettings, tz: dt.tzinfo,
                rules_dir: str | Path | None = None, batch: int | None = None,
                progress: Callable[[int, int], Any] | None = None, rules: CrmRules | None = None,
                only_changed: bool = True) -> RebuildReport:
    """The nightly catch-up of whatever the debounced rebuild missed (Redis down, a lost job) and
    of next steps that time alone changes, in batches (``progress(done, total)`` after each).

    ``only_changed`` (the default): only the customers :func:`_changed_customers` picks are read
    and rebuilt (the others are counted in ``skipped``); False: every customer with messages (or
    records left), in batches of consecutive ids read by key range — after the rules or the
    business hours changed (``scrm crm rebuild --all``)."""
    started = time.perf_counter()
    rules = rules or _rules(settings, rules_dir)
    hours = business_hours(settings, tz)
    size = batch or settings.rebuild_batch
    report = RebuildReport()
    ranged = True
    if only_changed:
        clock = time.perf_counter()
        with engine.connect() as conn:
            changed, everyone = _changed_customers(conn, rules, now)
        report.add_step("select", time.perf_counter() - clock)
        ids = sorted(changed)
        report.skipped = len(everyone - changed)
        ranged = False
        if len(changed) > size and len(changed) * 2 > len(everyone):  # most of many: all by key range
            ids, report.skipped, ranged = _all_customers(engine), 0, True
    else:
        ids = _all_customers(engine)
    if progress:
        progress(0, len(ids))
    for i in range(0, len(ids), size):
        chunk = ids[i:i + size]
        _run_batch(engine, chunk, (chunk[0], chunk[-1]) if ranged else None, rules=rules, settings=settings,
                   hours=hours, now=now, total=report)
        if progress:
            progress(min(i + size, len(ids)), len(ids))
    report.missing.clear()  # records left without messages are removed, not reported
    report.seconds = time.perf_counter() - started
    log.info("crm_rebuild_all", customers=report.customers, skipped=report.skipped, records=report.records,
             created=report.created, updated=report.updated, removed=report.removed, events=report.events,
             seconds=round(report.seconds, 3), steps={k: round(v, 2) for k, v in report.steps.items()})
    return report


def preview(engine: Engine, external_userid: str, *, now: dt.datetime, settings: CrmSettings, tz: dt.tzinfo,
            rules: CrmRules) -> tuple[list[Record], list[Event]]:
    """What a rebuild of this customer would make now; writes nothing (``scrm crm rules preview``)."""
    with engine.connect() as conn:
        messages = _load_messages(conn, [external_userid], None).get(external_userid, [])
    built = build(messages, rules, session_gap_hours=settings.session_gap_hours, hours=business_hours(settings, tz),
                  now=now)
    return built.records, built.events


# --------------------------------------------------------------------------------------------
# Reading, with edits applied


@dataclass(frozen=True)
class _Edit:
    anchor_sent_at: dt.datetime
    anchor_id: int
    note: str
    corrections: dict[str, Any]
    userid: str
    updated_at: dt.datetime
    id: int


def _edits(conn: Connection, external_userids: Sequence[str]) -> dict[str, list[_Edit]]:
    out: dict[str, list[_Edit]] = defaultdict(list)
    for chunk in _chunks(list(external_userids)):
        rows = conn.execute(
            sa.select(E.c.external_userid, M.c.sent_at, E.c.anchor_message_id, E.c.note, E.c.corrections,
                      E.c.userid, E.c.updated_at, E.c.id)
            .join(M, M.c.id == E.c.anchor_message_id)
            .where(E.c.external_userid.in_(list(chunk))))
        for ext, at, anchor, note, corr, uid, upd, eid in rows:
            out[ext].append(_Edit(as_utc(at), anchor, note or "", dict(corr or {}), uid, as_utc(upd), eid))
    return out


def _contains(record: FollowUp, edit: _Edit) -> bool:
    key = (edit.anchor_sent_at, edit.anchor_id)
    return ((as_utc(record.started_at), record.first_message_id) <= key
            <= (as_utc(record.ended_at), record.last_message_id))


def _view(record: FollowUp, edits: Iterable[_Edit]) -> RecordView:
    """The record with the newest edit anchored inside it. When sessions merged and two edits now
    fall in one record, only the newest is shown (the older stays stored and shows again if the
    sessions split apart)."""
    mine = [e for e in edits if _contains(record, e)]
    if not mine:
        return RecordView(record=record, first_question=record.first_question, last_reply=record.last_reply,
                          open_questions=list(record.open_questions), next_step=record.next_step)
    edit = max(mine, key=lambda e: (e.updated_at, e.id))
    c = edit.corrections
    return RecordView(
        record=record,
        first_question=c.get("first_question", record.first_question),
        last_reply=c.get("last_reply", record.last_reply),
        open_questions=list(c.get("open_questions", record.open_questions)),
        next_step=c.get("next_step", record.next_step),
        note=edit.note, corrected=frozenset(k for k in c if k in EDITABLE),
        edited_by=edit.userid, edited_at=edit.updated_at)


def _followup(row: Any) -> FollowUp:
    data = dict(row._mapping)
    data["started_at"] = as_utc(data["started_at"])
    data["ended_at"] = as_utc(data["ended_at"])
    data["built_at"] = as_utc(data["built_at"])
    return FollowUp.model_validate(data)


def records_for(engine: Engine, external_userid: str, *, limit: int = 50, offset: int = 0) -> list[RecordView]:
    """A customer's records, newest first, with edits applied."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(F).where(F.c.external_userid == external_userid)
                            .order_by(F.c.started_at.desc(), F.c.first_message_id.desc())
                            .limit(limit).offset(offset)).all()
        edits = _edits(conn, [external_userid]).get(external_userid, []) if rows else []
    return [_view(_followup(r), edits) for r in rows]


def latest_records(engine: Engine, external_userids: Iterable[str]) -> dict[str, RecordView]:
    """Each customer's newest record with edits applied (the rep's customer list)."""
    ids = sorted(set(external_userids))
    out: dict[str, RecordView] = {}
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            newest = (sa.select(F.c.external_userid, sa.func.max(F.c.started_at).label("at"))
                      .where(F.c.external_userid.in_(list(chunk))).group_by(F.c.external_userid).subquery())
            rows = conn.execute(sa.select(F).join(newest, sa.and_(newest.c.external_userid == F.c.external_userid,
                                                                  newest.c.at == F.c.started_at))).all()
            edits = _edits(conn, [r.external_userid for r in rows])
            for r in sorted(rows, key=lambda r: r.first_message_id):
                out[r.external_userid] = _view(_followup(r), edits.get(r.external_userid, []))
    return out


def _clean_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise EditRefused(f"{_LABELS.get(name, name)}必须是文字")
    text = value.strip()
    if len(text) > limit:
        raise EditRefused(f"{_LABELS.get(name, name)}最多 {limit} 个字（现在 {len(text)} 个）")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise EditRefused(f"{_LABELS.get(name, name)}包含不可见的控制字符")
    return text


_LABELS = {"note": "备注", "first_question": "客户的问题", "last_reply": "最后回复", "open_questions": "未回答的问题",
           "next_step": "下一步"}


def _clean_corrections(corrections: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in corrections.items():
        if name not in EDITABLE:
            raise EditRefused(f"不能修改“{name}”：只能修改客户的问题、最后回复、未回答的问题和下一步")
        if value is None:
            out[name] = None  # drop this correction: the built value shows again
            continue
        if name == "open_questions":
            if not isinstance(value, list):
                raise EditRefused("未回答的问题必须是一个列表")
            if len(value) > OPEN_QUESTIONS_MAX:
                raise EditRefused(f"未回答的问题最多 {OPEN_QUESTIONS_MAX} 条")
            items = []
            for item in value:
                raw = item.get("text") if isinstance(item, dict) else item
                text = _clean_text(raw, name, OPEN_QUESTION_TEXT_MAX)
                if not text:
                    continue
                entry: dict[str, Any] = {"text": text}
                if isinstance(item, dict) and isinstance(item.get("message_id"), int):
                    entry["message_id"] = item["message_id"]
                items.append(entry)
            out[name] = items
        else:
            out[name] = _clean_text(value, name, TEXT_MAX[name])
    return out


def save_edit(engine: Engine, *, external_userid: str, record_id: int, editor: str, now: dt.datetime,
              note: str | None = None, corrections: dict[str, Any] | None = None) -> RecordView:
    """Keep a rep's note and/or corrections (fields: first_question, last_reply, open_questions,
    next_step; a field given as None drops its correction) on a record; a later rebuild keeps them.

    The edit is anchored on the record's first message and starts from what the record shows now
    (the newest edit inside it), so saving only a note keeps earlier corrections. Raises EditRefused."""
    if not editor or not editor.strip():
        raise EditRefused("没有登录的员工，不能保存")
    clean_note = None if note is None else _clean_text(note, "note", NOTE_MAX)
    clean = _clean_corrections(corrections or {})
    if clean_note is None and not clean:
        raise EditRefused("没有要保存的修改")
    with engine.begin() as conn:
        row = conn.execute(sa.select(F).where(F.c.id == record_id, F.c.external_userid == external_userid)).first()
        if row is None:
            raise EditRefused("没有这条跟进记录（可能已经重新生成），请刷新页面后再试")
        record = _followup(row)
        shown = _view(record, _edits(conn, [external_userid]).get(external_userid, []))
        current = {k: getattr(shown, k) for k in shown.corrected}
        for name, value in clean.items():
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        values = dict(note=shown.note if clean_note is None else clean_note, corrections=current, userid=editor,
                      updated_at=now)
        updated = conn.execute(sa.update(E).where(E.c.external_userid == external_userid,
                                                  E.c.anchor_message_id == record.first_message_id).values(**values))
        if not updated.rowcount:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(E).values(external_userid=external_userid,
                                                     anchor_message_id=record.first_message_id, **values))
            except IntegrityError:  # saved at the same moment by another request: ours is the newer
                conn.execute(sa.update(E).where(E.c.external_userid == external_userid,
                                                E.c.anchor_message_id == record.first_message_id).values(**values))
        edits = _edits(conn, [external_userid]).get(external_userid, [])
    log.info("crm_edit_saved", external_userid=external_userid, record_id=record_id, editor=editor,
             fields=sorted(current), note=bool(values["note"]))
    return _view(record, edits)

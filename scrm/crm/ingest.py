"""Importing chats, calls and SMS into ``crm_messages``.

Every import is idempotent by (channel, source_id): rows are written in batches with
``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), one transaction a batch, so a
re-import changes nothing and an interrupted import is finished by running it again. A malformed
line is reported with its line number and the rest is imported. A call or SMS already stored under
its id with different content is refused the same way (the stored one is kept): a source system
never reuses an id, so the difference is a mistake to look at, not an update. Chats are not
compared: an archive msgid is unique and its message never changes (only a recall blanks it).

Calls and SMS find their customer by mobile through ``customer_mobiles`` (one indexed lookup a
batch). A mobile several customers share goes to the one the row's rep follows (active follow
relation), else to the smallest external_userid: deterministic, and counted as ``ambiguous``. A
mobile that matches nobody is stored with ``external_userid`` NULL and :func:`link_unmatched`
attaches it once the mobile is known. ``customer_mobiles`` itself is filled from remark_mobiles by
the contacts sync (:func:`scrm.contacts.service.upsert_follow`) and ``scrm orders reindex-mobiles``.

A recall blanks its original (``content`` "", ``payload`` {}, ``revoked_at`` = the recall's time)
whichever of the two is imported first: an original whose recall is already stored (this import or
an earlier one) is written blank; a recall whose original is stored blanks it with one UPDATE."""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from scrm.contacts.models import Employee, FollowRelation, FollowStatus
from scrm.crm.archive import BadLine, Skipped, parse_line
from scrm.crm.ingest_schema import RECORD, CallIn, SmsIn, problems
from scrm.crm.models import Channel, CrmMessage
from scrm.db import as_utc
from scrm.logs import get_logger
from scrm.orders.models import CustomerMobile

log = get_logger(__name__)

BATCH = 1000
SHANGHAI = ZoneInfo("Asia/Shanghai")
Progress = Callable[[int, int | None], None]  # (done, total): bytes of a file, else lines
Source = str | Path | Iterable[str]

CALL_COLUMNS = ("call_id", "mobile", "userid", "direction", "started_at", "duration_seconds", "status", "summary")
CALL_REQUIRED = ("call_id", "mobile", "direction", "started_at", "duration_seconds", "status")
SMS_COLUMNS = ("sms_id", "mobile", "userid", "direction", "sent_at", "content")
SMS_REQUIRED = ("sms_id", "mobile", "direction", "sent_at", "content")


@dataclass
class ImportReport:
    """What an import did; ``customers`` are those whose messages changed (rebuild their records)."""

    read: int = 0  # lines / rows read (blank lines and the CSV header not counted)
    created: int = 0
    unchanged: int = 0  # already stored (or twice in this input)
    revoked: int = 0  # originals blanked by a recall in this import
    skipped: int = 0  # lines without a customer message (switch, chats between colleagues)
    unmatched: int = 0  # calls/SMS stored without a customer: nobody has the mobile yet
    ambiguous: int = 0  # calls/SMS whose mobile several customers share (see the module docstring)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, why), refused rows
    customers: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def refused(self) -> int:
        return len(self.problems)


# -- reading ------------------------------------------------------------------------------------
def _lines(source: Source, progress: Progress | None) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for every line; text None when the line is not UTF-8. A file is read in
    binary so progress can count bytes; a BOM on the first line is dropped."""
    if isinstance(source, str | Path):
        path = Path(source)
        total = path.stat().st_size
        done = 0
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                done += len(raw)
                if progress is not None and n % BATCH == 0:
                    progress(done, total)
                try:
                    text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError:
                    yield n, None
                    continue
                yield n, text
        if progress is not None:
            progress(total, total)
        return
    n = 0
    for n, text in enumerate(source, 1):
        if progress is not None and n % BATCH == 0:
            progress(n, None)
        yield n, text.removeprefix("\ufeff") if n == 1 else text
    if progress is not None:
        progress(n, n)


# -- writing ------------------------------------------------------------------------------------
def _insert(conn: Connection):
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _fingerprint(row: Any) -> tuple:
    """What makes a call/SMS the same one when its id comes again."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    return (get("mobile"), get("userid"), get("direction"), as_utc(get("sent_at")), get("content"),
            get("duration_seconds"))


def _differences(stored: tuple, given: tuple) -> str:
    names = ("mobile", "userid", "direction", "time", "content", "duration_seconds")
    return ", ".join(f"{n} was {a!r}, now {b!r}" for n, a, b in zip(names, stored, given, strict=True) if a != b)


def resolve_mobiles(conn: Connection, pairs: Iterable[tuple[str, str | None]]) -> tuple[dict[tuple[str, str | None],
                                                                                               str | None], set[str]]:
    """Each (mobile, rep userid) pair's customer, by the rule in the module docstring, and the
    mobiles that several customers share."""
    pairs = set(pairs)
    mobiles = sorted({m for m, _ in pairs})
    owners: dict[str, list[str]] = {}
    m = CustomerMobile.__table__.c
    for i in range(0, len(mobiles), BATCH):
        for mobile, ext in conn.execute(select(m.mobile, m.external_userid).where(m.mobile.in_(mobiles[i:i + BATCH]))
                                        .order_by(m.mobile, m.external_userid)):
            owners.setdefault(mobile, []).append(ext)
    shared = {mobile for mobile, exts in owners.items() if len(exts) > 1}
    follows: set[tuple[str, str]] = set()
    if shared:
        candidates = sorted({e for mobile in shared for e in owners[mobile]})
        f = FollowRelation.__table__.c
        for i in range(0, len(candidates), BATCH):
            follows.update((u, e) for u, e in conn.execute(select(f.userid, f.external_userid).where(
                f.external_userid.in_(candidates[i:i + BATCH]), f.status == FollowStatus.active)))
    out: dict[tuple[str, str | None], str | None] = {}
    for mobile, userid in pairs:
        exts = owners.get(mobile) or []
        if len(exts) > 1 and userid:
            exts = [e for e in exts if (userid, e) in follows] or exts
        out[(mobile, userid)] = exts[0] if exts else None
    return out, shared


COLUMNS = ("channel", "source_id", "external_userid", "mobile", "userid", "direction", "sent_at", "msgtype", "content",
           "payload", "roomid", "duration_seconds", "revoked_at", "created_at")
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS crm_ingest_rows (channel varchar(8), source_id varchar(128), "
          "external_userid varchar(64), mobile varchar(16), userid varchar(64), direction varchar(4), "
          "sent_at timestamptz, msgtype varchar(32), content text, payload json, roomid varchar(64), "
          "duration_seconds integer, revoked_at timestamptz, created_at timestamptz) ON COMMIT DELETE ROWS")


def _insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the rows whose (channel, source_id) is new; returns their source_ids. PostgreSQL:
    COPY into a per-session temp table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING
    (a multi-row VALUES of 14,000 parameters costs more to build and parse than to run);
    SQLite: a multi-row INSERT ... ON CONFLICT DO NOTHING."""
    if not rows:
        return set()
    if conn.dialect.name != "postgresql":
        table = CrmMessage.__table__
        stmt = _insert(conn)(table).on_conflict_do_nothing(index_elements=["channel", "source_id"])
        return {sid for (sid,) in conn.execute(stmt.returning(table.c.source_id), rows)}
    raw: Any = conn.connection.dbapi_connection  # psycopg: COPY is not in the DBAPI
    columns = ", ".join(COLUMNS)
    with raw.cursor() as cur:
        cur.execute(_STAGE)
        with cur.copy(f"COPY crm_ingest_rows ({columns}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r["channel"], r["source_id"], r["external_userid"], r["mobile"], r["userid"],
                                r["direction"], r["sent_at"], r["msgtype"], r["content"],
                                json.dumps(r["payload"], ensure_ascii=False), r["roomid"], r["duration_seconds"],
                                r["revoked_at"], r["created_at"]))
        cur.execute(f"INSERT INTO crm_messages ({columns}) SELECT {columns} FROM crm_ingest_rows "
                    "ON CONFLICT (channel, source_id) DO NOTHING RETURNING source_id")
        return {sid for (sid,) in cur.fetchall()}  # the staged rows go at commit


class _Writer:
    """Batches rows into the table; ``compare``: a row whose id is stored with other content is a
    problem (calls, SMS). ``outcomes`` (the API) records each position's outcome.

    ``background``: batches are written by one worker thread, in order, while the caller parses
    the next one (the database works while Python parses; at most one batch waits). A failed write
    is raised to the caller at its next batch or at :meth:`flush`."""

    def __init__(self, engine: Engine, report: ImportReport, *, compare: bool, chats: bool,
                 outcomes: dict[int, str] | None = None, background: bool = False):
        self.engine, self.report, self.compare, self.chats, self.outcomes = engine, report, compare, chats, outcomes
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-ingest") if background else None
        self._pending: Future[None] | None = None
        self.recalls: dict[str, dt.datetime] = {}  # pre_msgid -> the recall's time (chats)
        if chats:
            self._load_recalls()

    def _load_recalls(self) -> None:
        c = CrmMessage.__table__.c
        with self.engine.connect() as conn:
            for payload, at in conn.execute(select(c.payload, c.sent_at).where(
                    c.channel == Channel.chat, c.msgtype == "revoke")):
                pre = (payload or {}).get("pre_msgid")
                if pre:
                    self.recalls.setdefault(pre, as_utc(at))

    def add(self, line: int, row: dict[str, Any]) -> None:
        self.rows.append((line, row))
        if len(self.rows) >= BATCH:
            self._submit()

    def _submit(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        if self._pool is None:
            self._write(rows)
            return
        self._wait()
        self._pending = self._pool.submit(self._write, rows)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def flush(self) -> None:
        """Write what is left and wait until every batch is stored."""
        self._submit()
        self._wait()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _outcome(self, line: int, outcome: str) -> None:
        if self.outcomes is not None:
            self.outcomes[line] = outcome

    def _write(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        report = self.report
        # One row per id: a repeat within the batch is unchanged or, with other content, a problem.
        first: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        batch: list[tuple[int, dict[str, Any]]] = []
        for line, row in rows:
            key = (row["channel"], row["source_id"])
            if key in first:
                seen_line, seen = first[key]
                if self.compare and _fingerprint(seen) != _fingerprint(row):
                    report.problems.append((line, f"{row['channel']} {row['source_id']!r} appears on line "
                                                  f"{seen_line} with different content"))
                    self._outcome(line, "conflict")
                else:
                    report.unchanged += 1
                    self._outcome(line, "unchanged")
                continue
            first[key] = (line, row)
            batch.append((line, row))
        with self.engine.begin() as conn:
            if not self.chats:
                self._match(conn, batch)
            blanked = set()
            if self.chats:
                for _, row in batch:
                    if row["msgtype"] == "revoke":
                        self.recalls.setdefault(row["payload"]["pre_msgid"], row["sent_at"])
                for _, row in batch:
                    at = self.recalls.get(row["source_id"])
                    if at is not None and row["msgtype"] != "revoke":
                        row.update(content="", payload={}, revoked_at=at)
                        blanked.add(row["source_id"])
            created = _insert_rows(conn, [r for _, r in batch])
            existing = []
            for line, row in batch:
                if row["source_id"] in created:
                    report.created += 1
                    self._outcome(line, "created")
                    if row["external_userid"]:
                        report.customers.add(row["external_userid"])
                    if row["source_id"] in blanked:
                        report.revoked += 1
                else:
                    existing.append((line, row))
            if existing and self.compare:
                self._compare(conn, existing)
            else:
                report.unchanged += len(existing)
                for line, _ in existing:
                    self._outcome(line, "unchanged")
            if self.chats:
                self._blank_stored(conn, [r for _, r in batch if r["msgtype"] == "revoke"])

    def _match(self, conn: Connection, batch: list[tuple[int, dict[str, Any]]]) -> None:
        found, shared = resolve_mobiles(conn, ((r["mobile"], r["userid"]) for _, r in batch))
        for _, row in batch:
            row["external_userid"] = found[(row["mobile"], row["userid"])]
            if row["external_userid"] is None:
                self.report.unmatched += 1
            elif row["mobile"] in shared:
                self.report.ambiguous += 1

    def _compare(self, conn: Connection, existing: list[tuple[int, dict[str, Any]]]) -> None:
        c = CrmMessage.__table__.c
        channel = existing[0][1]["channel"]
        stored = {r.source_id: r for r in conn.execute(select(
            c.source_id, c.mobile, c.userid, c.direction, c.sent_at, c.content, c.duration_seconds).where(
            c.channel == channel, c.source_id.in_([row["source_id"] for _, row in existing])))}
        for line, row in existing:
            old = stored.get(row["source_id"])
            if old is not None and _fingerprint(old) != _fingerprint(row):
                diff = _differences(_fingerprint(old), _fingerprint(row))
                self.report.problems.append((line, f"{channel} {row['source_id']!r} is already imported with "
                                                   f"different content ({diff}); kept the stored one"))
                self._outcome(line, "conflict")
            else:
                self.report.unchanged += 1
                self._outcome(line, "unchanged")

    def _blank_stored(self, conn: Connection, recalls: list[dict[str, Any]]) -> None:
        """Blank the stored originals of these recalls (not yet blanked)."""
        if not recalls:
            return
        c = CrmMessage.__table__.c
        when = {r["payload"]["pre_msgid"]: r["sent_at"] for r in recalls}
        targets = conn.execute(select(c.id, c.source_id, c.external_userid).where(
            c.channel == Channel.chat, c.source_id.in_(sorted(when)), c.msgtype != "revoke",
            c.revoked_at.is_(None))).all()
        if not targets:
            return
        conn.execute(update(CrmMessage.__table__).where(and_(c.id == bindparam("target"), c.revoked_at.is_(None)))
                     .values(content="", payload={}, revoked_at=bindparam("at")),
                     [{"target": t.id, "at": when[t.source_id]} for t in targets])
        self.report.revoked += len(targets)
        self.report.customers.update(t.external_userid for t in targets if t.external_userid)


def _finish(report: ImportReport, kind: str, started: float) -> ImportReport:
    report.seconds = time.monotonic() - started
    report.problems.sort(key=lambda p: p[0])
    log.info("crm_imported", kind=kind, read=report.read, created=report.created, unchanged=report.unchanged,
             revoked=report.revoked, skipped=report.skipped, unmatched=report.unmatched, ambiguous=report.ambiguous,
             refused=report.refused, customers=len(report.customers), seconds=round(report.seconds, 2))
    return report


# -- chats --------------------------------------------------------------------------------------
def _employees(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(conn.execute(select(Employee.__table__.c.userid)).scalars())


def import_chats(engine: Engine, source: Source, *, now: dt.datetime, progress: Progress | None = None) -> ImportReport:
    """Import chat-archive JSON lines (:mod:`scrm.crm.archive`) from a file path or an iterable of lines."""
    started = time.monotonic()
    report = ImportReport()
    employees = _employees(engine)
    writer = _Writer(engine, report, compare=False, chats=True, background=True)
    try:
        for line, text in _lines(source, progress):
            if text is None:
                report.read += 1
                report.problems.append((line, "not UTF-8"))
                continue
            if not text.strip():
                continue
            report.read += 1
            try:
                row = parse_line(text, employees, now=now)
            except BadLine as exc:
                report.problems.append((line, str(exc)))
                continue
            if isinstance(row, Skipped):
                report.skipped += 1
                continue
            writer.add(line, row)
        writer.flush()
    finally:
        writer.close()
    return _finish(report, "chats", started)


# -- calls and SMS ------------------------------------------------------------------------------
def _local_time(value: str, tz: dt.tzinfo) -> str:
    """A CSV time: ISO-8601 (``2026-11-09 10:05:00``, ``2026/11/09 10:05``, with or without a zone);
    without a zone it is local time in ``tz``. Returned as ISO text with the zone."""
    text = value.strip()
    try:
        moment = dt.datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        return text  # the model refuses it with its own reason
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.isoformat()


def _csv(engine: Engine, source: Source, *, model: type[CallIn] | type[SmsIn], columns: tuple[str, ...],
         required: tuple[str, ...], id_column: str, time_column: str, now: dt.datetime, tz: dt.tzinfo,
         progress: Progress | None, kind: str) -> ImportReport:
    started = time.monotonic()
    report = ImportReport()
    writer = _Writer(engine, report, compare=True, chats=False, background=True)
    try:
        _read_csv(writer, report, source, model=model, columns=columns, required=required, id_column=id_column,
                  time_column=time_column, now=now, tz=tz, progress=progress)
    finally:
        writer.close()
    return _finish(report, kind, started)


def _read_csv(writer: _Writer, report: ImportReport, source: Source, *, model: type[CallIn] | type[SmsIn],
              columns: tuple[str, ...], required: tuple[str, ...], id_column: str, time_column: str,
              now: dt.datetime, tz: dt.tzinfo, progress: Progress | None) -> None:
    numbered = _lines(source, progress)
    where: dict[str, int] = {"line": 0}

    def texts() -> Iterator[str]:
        for line, text in numbered:
            where["line"] = line
            if text is None:  # reported here, read as an empty line (skipped) so the rest goes on
                report.read += 1
                report.problems.append((line, "not UTF-8: save the file as UTF-8 CSV"))
                text = "\n"
            yield text

    reader = csv.reader(texts())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        report.problems.append((1, "the file is empty: the first line must name the columns"))
        return
    unknown = [h for h in header if h not in columns]
    missing = [c for c in required if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        parts = ([f"unknown column(s) {', '.join(map(repr, unknown))}"] if unknown else []) + (
            [f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            ["a column appears twice"] if len(set(header)) != len(header) else [])
        report.problems.append((1, "; ".join(parts) + f" (columns: {', '.join(columns)}); nothing imported"))
        return
    end = where["line"]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.read += 1
            report.problems.append((end + 1, f"not CSV: {exc}"))
            end = where["line"]
            continue
        line, end = end + 1, where["line"]
        if not any(c.strip() for c in cells):
            continue
        report.read += 1
        if len(cells) != len(header):
            report.problems.append((line, f"{len(cells)} cells, the header has {len(header)}"))
            continue
        data: dict[str, Any] = dict(zip(header, cells, strict=True))
        given_mobile = data["mobile"].strip()
        data["id"] = data.pop(id_column)
        data[time_column] = _local_time(data[time_column], tz)
        try:
            record = model.model_validate(data)
        except ValidationError as exc:
            report.problems.append((line, problems(exc)))
            continue
        writer.add(line, record.row(None, given_mobile=given_mobile, now=now))
    writer.flush()


def import_calls(engine: Engine, source: Source, *, now: dt.datetime, tz: dt.tzinfo = SHANGHAI,
                 progress: Progress | None = None) -> ImportReport:
    """Import a call-centre CSV export (columns: :data:`CALL_COLUMNS`; crm/samples/README.md)."""
    return _csv(engine, source, model=CallIn, columns=CALL_COLUMNS, required=CALL_REQUIRED, id_column="call_id",
                time_column="started_at", now=now, tz=tz, progress=progress, kind="calls")


def import_sms(engine: Engine, source: Source, *, now: dt.datetime, tz: dt.tzinfo = SHANGHAI,
               progress: Progress | None = None) -> ImportReport:
    """Import an SMS-gateway CSV export (columns: :data:`SMS_COLUMNS`; crm/samples/README.md)."""
    return _csv(engine, source, model=SmsIn, columns=SMS_COLUMNS, required=SMS_REQUIRED, id_column="sms_id",
                time_column="sent_at", now=now, tz=tz, progress=progress, kind="sms")


# -- the records API ----------------------------------------------------------------------------
@dataclass
class RecordOutcome:
    index: int  # position in the request's ``records``
    channel: str | None
    id: str | None
    outcome: str  # created | unchanged | conflict | invalid
    matched: bool = False  # stored with a customer (created or unchanged)
    error: str | None = None


@dataclass
class BatchReport:
    results: list[RecordOutcome]
    customers: set[str]

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


def record_batch(engine: Engine, records: list[dict[str, Any]], *, now: dt.datetime) -> BatchReport:
    """Store a batch of calls and SMS (the API). Each record is validated on its own; valid ones are
    stored (idempotent by channel and id, a reused id with other content is a conflict)."""
    results: dict[int, RecordOutcome] = {}
    by_channel: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, raw in enumerate(records):
        channel = raw.get("channel") if isinstance(raw, dict) else None
        rid = raw.get("id") if isinstance(raw, dict) else None
        try:
            record = RECORD.validate_python(raw)
        except ValidationError as exc:
            results[i] = RecordOutcome(i, channel if isinstance(channel, str) else None,
                                       rid if isinstance(rid, str) else None, "invalid", error=problems(exc))
            continue
        given = str(raw.get("mobile", "")).strip()
        by_channel.setdefault(record.channel, []).append((i, record.row(None, given_mobile=given, now=now)))
    customers: set[str] = set()
    for channel, rows in by_channel.items():
        report, outcomes = ImportReport(), dict[int, str]()
        writer = _Writer(engine, report, compare=True, chats=False, outcomes=outcomes)
        for i, row in rows:
            writer.add(i, row)
        writer.flush()
        errors = dict(report.problems)
        stored = _customers_of(engine, channel, [row["source_id"] for _, row in rows])
        for i, row in rows:
            outcome = outcomes[i]
            ext = stored.get(row["source_id"]) if outcome != "conflict" else None
            results[i] = RecordOutcome(i, channel, row["source_id"], outcome, matched=ext is not None,
                                       error=errors.get(i))
        customers |= report.customers
    return BatchReport([results[i] for i in range(len(records))], customers)


def _customers_of(engine: Engine, channel: str, ids: list[str]) -> dict[str, str | None]:
    c = CrmMessage.__table__.c
    with engine.connect() as conn:
        return {sid: ext for sid, ext in conn.execute(select(c.source_id, c.external_userid).where(
            c.channel == channel, c.source_id.in_(ids)))}


# -- linking later ------------------------------------------------------------------------------
def link_unmatched(engine: Engine, mobiles: Iterable[str] | None = None) -> set[str]:
    """Attach calls and SMS stored without a customer to the customer ``customer_mobiles`` now
    names for their mobile (all unmatched mobiles, or only these, E.164). Returns the
    external_userids that got messages (rebuild their records)."""
    c = CrmMessage.__table__.c
    wanted = sorted(set(mobiles)) if mobiles is not None else None
    if wanted == []:
        return set()
    changed: set[str] = set()
    with engine.begin() as conn:
        query = select(c.mobile, c.userid).where(c.external_userid.is_(None), c.mobile.is_not(None)).distinct()
        pairs: set[tuple[str, str | None]] = set()
        if wanted is None:
            pairs.update((m, u) for m, u in conn.execute(query))
        else:
            for i in range(0, len(wanted), BATCH):
                pairs.update((m, u) for m, u in conn.execute(query.where(c.mobile.in_(wanted[i:i + BATCH]))))
        if not pairs:
            return set()
        found, _ = resolve_mobiles(conn, pairs)
        for (mobile, userid), ext in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if ext is None:
                continue
            who = c.userid.is_(None) if userid is None else c.userid == userid
            linked = conn.execute(update(CrmMessage.__table__).where(
                c.external_userid.is_(None), c.mobile == mobile, who).values(external_userid=ext)).rowcount
            if linked:
                changed.add(ext)
    if changed:
        log.info("crm_unmatched_linked", customers=len(changed))
    return changed

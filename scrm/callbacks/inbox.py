"""Looking into the callback inbox and re-driving rows: what `scrm inbox` shows and does.

The report counts rows by status and by event, and lists the rows someone should look at: those
that failed (gave up after max attempts), those stuck pending longer than a threshold (no worker
took them: Redis or the workers are down), and those applied with a note (WeCom's refusal limited
what could be applied, e.g. 40096). A re-drive sets chosen rows back to pending with their
attempts reset, commits, then enqueues them; the worker's claim (pending -> done in one
conditional UPDATE) still applies each re-driven row once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection, Engine

from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.db import utcnow
from scrm.logs import get_logger

log = get_logger(__name__)
T = CallbackInbox.__table__


class InboxError(ValueError):
    """A request about the inbox that cannot be carried out; nothing was changed."""


class UnknownInboxIds(InboxError):
    def __init__(self, ids: list[int]):
        self.ids = ids
        super().__init__(f"no inbox row with id {', '.join(map(str, ids))}")


class DoneRowsRefused(InboxError):
    def __init__(self, ids: list[int]):
        self.ids = ids
        super().__init__(f"inbox row {', '.join(map(str, ids))} is done (applied already); "
                         "re-driving applies it again: pass --include-done to do so")


class NothingChosen(InboxError):
    def __init__(self):
        super().__init__("choose rows to re-drive: inbox ids, or --failed")


@dataclass(frozen=True)
class InboxRow:
    id: int
    event: str
    change_type: str
    status: str
    attempts: int
    received_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class RowList:
    """One page of a list of rows, and how many rows the list has in all."""

    rows: list[InboxRow]
    total: int
    offset: int = 0

    @property
    def more(self) -> int:
        """Rows after this page."""
        return max(0, self.total - self.offset - len(self.rows))


@dataclass(frozen=True)
class EventCount:
    event: str
    change_type: str
    by_status: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class InboxReport:
    by_status: dict[str, int]  # every InboxStatus, zero included
    by_event: list[EventCount]
    failed: RowList
    stuck: RowList
    noted: RowList  # done, with a note in last_error
    stuck_after: timedelta

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class RedriveResult:
    rows: list[InboxRow]  # as they were before the re-drive
    enqueued: bool
    enqueue_error: str | None = None
    skipped: list[int] = field(default_factory=list)  # applied meanwhile by a worker: left done


def _row(r) -> InboxRow:
    return InboxRow(id=r.id, event=r.event, change_type=r.change_type, status=r.status, attempts=r.attempts,
                    received_at=r.received_at, last_error=r.last_error)


_COLUMNS = (T.c.id, T.c.event, T.c.change_type, T.c.status, T.c.attempts, T.c.received_at, T.c.last_error)


def _page(conn: Connection, where, *, limit: int, offset: int) -> RowList:
    total = conn.execute(select(func.count()).select_from(T).where(where)).scalar_one()
    rows = conn.execute(select(*_COLUMNS).where(where).order_by(T.c.id).limit(limit).offset(offset)).all()
    return RowList([_row(r) for r in rows], total, offset)


def inbox_report(engine: Engine, *, stuck_after: timedelta = timedelta(minutes=10), limit: int = 20,
                 offset: int = 0, now: datetime | None = None) -> InboxReport:
    """Counts by status and by event, and a page (``limit`` rows from ``offset``) of the failed,
    stuck and noted rows, oldest first."""
    if limit < 0 or offset < 0:
        raise InboxError("limit and offset must not be negative")
    cutoff = (now or utcnow()) - stuck_after
    with engine.connect() as conn:
        by_status = {status.value: 0 for status in InboxStatus}
        by_event: dict[tuple[str, str], dict[str, int]] = {}
        for event, change_type, status, n in conn.execute(
            select(T.c.event, T.c.change_type, T.c.status, func.count())
            .group_by(T.c.event, T.c.change_type, T.c.status)
        ):
            by_status[status] = by_status.get(status, 0) + n
            by_event.setdefault((event, change_type), {})[status] = n
        failed = _page(conn, T.c.status == InboxStatus.failed, limit=limit, offset=offset)
        stuck = _page(conn, and_(T.c.status == InboxStatus.pending, T.c.received_at <= cutoff),
                      limit=limit, offset=offset)
        noted = _page(conn, and_(T.c.status == InboxStatus.done, T.c.last_error.is_not(None)),
                      limit=limit, offset=offset)
    events = [EventCount(e, c, counts) for (e, c), counts in sorted(by_event.items())]
    return InboxReport(by_status, events, failed, stuck, noted, stuck_after)


def redrive(engine: Engine, send: Callable[[list[int]], None], ids: Iterable[int] = (), *,
            failed: bool = False, include_done: bool = False) -> RedriveResult:
    """Set the chosen rows (``ids``, plus every failed row with ``failed``) back to pending with
    their attempts reset, then ``send`` their ids to the queue.

    Unknown ids, or done rows without ``include_done``, refuse the whole request before anything
    changes. The update is conditional on the status each row was chosen in, so a row a worker
    applied in between is left done (``skipped``), not applied a second time. The rows are
    committed as pending before they are sent: a failed send only delays them (the relay sends
    pending rows later)."""
    wanted = sorted(set(ids))
    if not wanted and not failed:
        raise NothingChosen()
    with engine.begin() as conn:
        found = {r.id: _row(r) for r in conn.execute(select(*_COLUMNS).where(T.c.id.in_(wanted)))} if wanted else {}
        unknown = [i for i in wanted if i not in found]
        if unknown:
            raise UnknownInboxIds(unknown)
        done = [i for i in wanted if found[i].status == InboxStatus.done]
        if done and not include_done:
            raise DoneRowsRefused(done)
        if failed:
            for r in conn.execute(select(*_COLUMNS).where(T.c.status == InboxStatus.failed)):
                found.setdefault(r.id, _row(r))
        chosen = [found[i] for i in sorted(found)]
        redriven: list[InboxRow] = []
        skipped: list[InboxRow] = []
        for row in chosen:
            changed = conn.execute(
                update(T).where(T.c.id == row.id, T.c.status == row.status)
                .values(status=InboxStatus.pending, attempts=0, done_at=None, enqueued_at=None)
            ).rowcount
            (redriven if changed else skipped).append(row)
    result_ids = [r.id for r in redriven]
    enqueued, error = False, None
    if result_ids:
        try:
            send(result_ids)
            enqueued = True
        except Exception as exc:  # Redis down: the rows are pending, the relay sends them later
            error = f"{type(exc).__name__}: {exc}"
            log.warning("inbox_redrive_enqueue_failed", inbox_ids=result_ids, error=type(exc).__name__)
        if enqueued:
            with engine.begin() as conn:
                conn.execute(update(T).where(T.c.id.in_(result_ids), T.c.status == InboxStatus.pending)
                             .values(enqueued_at=utcnow()))
    log.info("inbox_redriven", inbox_ids=result_ids, skipped=[r.id for r in skipped], enqueued=enqueued)
    return RedriveResult(redriven, enqueued, error, [r.id for r in skipped])

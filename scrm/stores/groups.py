"""Which store each customer group (客户群) serves: attach, move, detach and list.

A group's ``store_code`` decides which store's group live code (群活码) lists it, which store's
variables its SOP posts use, and where routed customers land. WeCom knows nothing of stores, so
operators set it here: one command for a few groups, or a ``chat_id,store_code`` CSV for many.

Every change is all-or-nothing: the whole request is checked first, every problem is reported
together in a :class:`GroupAssignmentError`, and nothing is written unless there are none. Running
the same request again changes nothing. Nothing here calls WeCom: after a change, the stores'
group live codes are refreshed by ``scrm stores codes`` or the scheduler
(:attr:`AssignReport.stores_to_refresh` names the stores).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection, Engine

from scrm.contacts.models import Employee
from scrm.db import utcnow
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.stores.csvio import (  # the store CSV's reading rules, shared so both files read alike
    RowError,
    _chunks,
    _clean,
    _code_error,
    _DecodeError,
    _records,
    decode,
)
from scrm.stores.models import STORE_CODE_PATTERN, Store, StoreStatus

ASSIGNMENT_COLUMNS: tuple[str, ...] = ("chat_id", "store_code")
_CODE_RE = re.compile(STORE_CODE_PATTERN)
_LIST_HINT = "run `scrm stores groups list --unassigned` to see chat ids"
# Names people give these columns: a hint in the error, not an alias.
_COLUMN_HINTS = {
    "chatid": "chat_id", "chat": "chat_id", "group_id": "chat_id", "groupid": "chat_id", "id": "chat_id",
    "群id": "chat_id", "客户群id": "chat_id", "store": "store_code", "code": "store_code",
    "storecode": "store_code", "store_id": "store_code", "门店": "store_code", "门店编码": "store_code",
    "门店编号": "store_code", "编码": "store_code",
}


# ------------------------------------------------------------------------------------------
# Results and errors


@dataclass(frozen=True)
class GroupChange:
    """One group and its store before and after (None: no store)."""

    chat_id: str
    name: str
    from_store: str | None
    to_store: str | None


@dataclass
class ChangeReport:
    """What a change of groups' stores did (or, with ``dry_run``, would do)."""

    dry_run: bool = False

    @property
    def changes(self) -> list[GroupChange]:
        """The groups whose store changes."""
        raise NotImplementedError

    @property
    def stores_to_refresh(self) -> list[str]:
        """Stores whose group live code no longer matches their groups: the ones that gained a
        group and the ones that lost one."""
        return sorted({code for c in self.changes for code in (c.from_store, c.to_store) if code})


@dataclass
class AssignReport(ChangeReport):
    assigned: list[GroupChange] = field(default_factory=list)  # had no store, now on one
    moved: list[GroupChange] = field(default_factory=list)  # from one store to another
    detached: list[GroupChange] = field(default_factory=list)  # store removed (CSV rows with no store)
    unchanged: list[GroupChange] = field(default_factory=list)  # already where asked
    store_code: str | None = None  # assign_groups: the store, and its name to confirm it
    store_name: str | None = None

    @property
    def changes(self) -> list[GroupChange]:
        return [*self.assigned, *self.moved, *self.detached]


@dataclass
class DetachReport(ChangeReport):
    detached: list[GroupChange] = field(default_factory=list)
    unchanged: list[GroupChange] = field(default_factory=list)  # had no store already

    @property
    def changes(self) -> list[GroupChange]:
        return list(self.detached)


@dataclass(frozen=True)
class GroupProblem:
    """Why a request was refused. ``chat_id`` is the group it is about (None: the store or the
    request); ``line``/``column`` locate it in a CSV when it came from one."""

    message: str
    chat_id: str | None = None
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        return self.message

    def located(self, path: object) -> str:
        """``path:line: column: message``, like :meth:`RowError.located`."""
        if self.line is None:
            return f"{path}: {self.message}"
        column = f"{self.column}: " if self.column else ""
        return f"{path}:{self.line}: {column}{self.message}"


class StoreGroupsError(Exception):
    """Base of this module's errors."""


class GroupAssignmentError(StoreGroupsError):
    """The request was refused and nothing was written; ``problems`` lists every reason, so all
    can be fixed in one go."""

    def __init__(self, problems: Sequence[GroupProblem]):
        self.problems = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


class UnknownStoreError(StoreGroupsError):
    def __init__(self, store_code: str):
        self.store_code = store_code
        super().__init__(f"no store '{store_code}' (see `scrm stores list`)")


# ------------------------------------------------------------------------------------------
# Reading what is stored


@dataclass(frozen=True)
class _Group:
    chat_id: str
    name: str
    status: str
    store_code: str | None


def _load_groups(conn: Connection, chat_ids: Sequence[str], *, lock: bool) -> dict[str, _Group]:
    """The stored groups among ``chat_ids``; locked (PostgreSQL) when they are about to change, so
    a concurrent assignment cannot slip between the check and the write."""
    g = CustomerGroup.__table__
    found: dict[str, _Group] = {}
    for chunk in _chunks(list(chat_ids)):
        query = select(g.c.chat_id, g.c.name, g.c.status, g.c.store_code).where(g.c.chat_id.in_(chunk))
        if lock:
            query = query.with_for_update()
        for r in conn.execute(query):
            found[r.chat_id] = _Group(r.chat_id, r.name or "", r.status, r.store_code)
    return found


def _load_stores(conn: Connection, codes: Iterable[str]) -> dict[str, tuple[str, str]]:
    """code → (name, status) for the stores among ``codes``."""
    s = Store.__table__
    found: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(sorted(set(codes))):
        for r in conn.execute(select(s.c.code, s.c.name, s.c.status).where(s.c.code.in_(chunk))):
            found[r.code] = (r.name, r.status)
    return found


def _named(conn: Connection, missing: Sequence[str]) -> dict[str, list[str]]:
    """For chat ids that were not found: the chat ids of groups *named* like that, because a
    group name in the chat id column is the usual mistake."""
    g = CustomerGroup.__table__
    names: dict[str, list[str]] = {}
    for chunk in _chunks(list(missing)):
        for r in conn.execute(select(g.c.name, g.c.chat_id).where(g.c.name.in_(chunk)).order_by(g.c.chat_id)):
            names.setdefault(r.name, []).append(r.chat_id)
    return names


def _missing_group(chat_id: str, named: dict[str, list[str]]) -> str:
    ids = named.get(chat_id)
    if ids:
        shown = ", ".join(ids[:3]) + (" …" if len(ids) > 3 else "")
        which = "its chat id is" if len(ids) == 1 else f"{len(ids)} groups have that name, chat ids"
        return f"'{chat_id}' is a group name, not a chat id: {which} {shown}"
    return f"no customer group with chat id '{chat_id}' ({_LIST_HINT})"


def _store_problem(code: str, stores: dict[str, tuple[str, str]]) -> str | None:
    if code not in stores:
        if not _CODE_RE.fullmatch(code):
            return _code_error(code)
        return f"no store '{code}' (see `scrm stores list`)"
    name, status = stores[code]
    if status != StoreStatus.open:
        return (f"store '{code}' ({name}) is {status}: groups can only be added to an open store "
                "(reopen it with status=open in `scrm stores import`)")
    return None


def _dismissed(group: _Group) -> str:
    return (f"group {group.chat_id} ({group.name or 'no name'}) is {group.status}: only active groups "
            "can be added to a store")


def _write(conn: Connection, changes: Iterable[GroupChange]) -> None:
    g = CustomerGroup.__table__
    rows = [{"b_chat_id": c.chat_id, "v_store_code": c.to_store, "v_updated_at": utcnow()} for c in changes]
    if rows:
        conn.execute(update(g).where(g.c.chat_id == bindparam("b_chat_id"))
                     .values(store_code=bindparam("v_store_code"), updated_at=bindparam("v_updated_at")), rows)


def _unique(chat_ids: Iterable[str]) -> list[str]:
    """Trimmed, without blanks or repeats, in the order given."""
    return list(dict.fromkeys(c for c in (_clean(c) for c in chat_ids) if c))


# ------------------------------------------------------------------------------------------
# Assign / detach


def _record(report: AssignReport, group: _Group, chat_id: str, store_code: str | None) -> None:
    """File the change of one group's store under what it is: unchanged, detached, assigned or moved."""
    change = GroupChange(chat_id, group.name, group.store_code, store_code)
    if group.store_code == store_code:
        report.unchanged.append(change)
    elif store_code is None:
        report.detached.append(change)
    elif group.store_code is None:
        report.assigned.append(change)
    else:
        report.moved.append(change)


def assign_groups(engine: Engine, store_code: str, chat_ids: Sequence[str], *,
                  dry_run: bool = False) -> AssignReport:
    """Put the groups ``chat_ids`` on the open store ``store_code``, all or nothing.

    A group on another store moves (reported in ``moved``), one already on this store is
    ``unchanged``; repeated chat ids count once. Refused with :class:`GroupAssignmentError`, and
    nothing written, when the store is unknown or closed, or any chat id is not a stored group or
    the group is not active: the error lists every such problem. ``dry_run`` checks and reports
    without writing.
    """
    store_code = _clean(store_code)
    wanted = _unique(chat_ids)
    report = AssignReport(dry_run=dry_run, store_code=store_code)
    with engine.begin() as conn:
        stores = _load_stores(conn, [store_code])
        report.store_name = stores[store_code][0] if store_code in stores else None
        problems: list[GroupProblem] = []
        store_problem = _store_problem(store_code, stores)
        if store_problem:
            problems.append(GroupProblem(store_problem))
        groups = _load_groups(conn, wanted, lock=not dry_run)
        named = _named(conn, [c for c in wanted if c not in groups])
        for chat_id in wanted:
            group = groups.get(chat_id)
            if group is None:
                problems.append(GroupProblem(_missing_group(chat_id, named), chat_id))
            elif group.status != GroupStatus.active:
                problems.append(GroupProblem(_dismissed(group), chat_id))
        if problems:
            raise GroupAssignmentError(problems)
        for chat_id in wanted:
            _record(report, groups[chat_id], chat_id, store_code)
        if not dry_run:
            _write(conn, report.changes)
    return report


def detach_groups(engine: Engine, chat_ids: Sequence[str], *, dry_run: bool = False) -> DetachReport:
    """Take the groups ``chat_ids`` off their stores, all or nothing. Any status is fine (a
    dismissed group can be detached); a chat id that is not a stored group refuses the whole
    request with :class:`GroupAssignmentError` naming every such id."""
    wanted = _unique(chat_ids)
    report = DetachReport(dry_run=dry_run)
    with engine.begin() as conn:
        groups = _load_groups(conn, wanted, lock=not dry_run)
        named = _named(conn, [c for c in wanted if c not in groups])
        problems = [GroupProblem(_missing_group(c, named), c) for c in wanted if c not in groups]
        if problems:
            raise GroupAssignmentError(problems)
        for chat_id in wanted:
            group = groups[chat_id]
            change = GroupChange(chat_id, group.name, group.store_code, None)
            (report.unchanged if group.store_code is None else report.detached).append(change)
        if not dry_run:
            _write(conn, report.detached)
    return report


# ------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class StoreGroupRow:
    chat_id: str
    name: str
    owner_userid: str | None
    owner_name: str  # from the synced employees; '' when unknown
    members: int  # current members (employees and customers)
    store_code: str | None
    store_name: str | None  # None when no store, or the code names no stored store
    status: str  # a GroupStatus


@dataclass
class GroupListing:
    """A page of groups and how many matched in all."""

    rows: list[StoreGroupRow]
    total: int

    def __iter__(self) -> Iterator[StoreGroupRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def list_store_groups(engine: Engine, store_code: str | None = None, *, unassigned: bool = False,
                      limit: int | None = None) -> GroupListing:
    """Customer groups with their owner, member count and store.

    - ``store_code``: only that store's groups (any status, active first); an unknown store raises
      :class:`UnknownStoreError` rather than listing nothing.
    - ``unassigned``: only active groups without a store, the ones waiting to be assigned.
    - neither: every group, grouped by store (those without one first), active first.

    Within that, groups are ordered by name then chat id. ``limit`` caps the rows, not ``total``.
    """
    g, m, e, s = (CustomerGroup.__table__, GroupMember.__table__, Employee.__table__, Store.__table__)
    where = []
    if store_code is not None:
        where.append(g.c.store_code == store_code)
    if unassigned:
        where += [g.c.store_code.is_(None), g.c.status == GroupStatus.active]
    members = (select(m.c.chat_id, func.count().label("n")).where(m.c.state == MemberState.member)
               .group_by(m.c.chat_id).subquery())
    query = (select(g.c.chat_id, g.c.name, g.c.owner_userid, e.c.name.label("owner_name"),
                    func.coalesce(members.c.n, 0).label("members"), g.c.store_code,
                    s.c.name.label("store_name"), g.c.status)
             .select_from(g.outerjoin(members, members.c.chat_id == g.c.chat_id)
                          .outerjoin(e, e.c.userid == g.c.owner_userid)
                          .outerjoin(s, s.c.code == g.c.store_code))
             .where(*where)
             .order_by(g.c.store_code.is_not(None), g.c.store_code, (g.c.status != GroupStatus.active), g.c.name,
                       g.c.chat_id))
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        if store_code is not None and not _load_stores(conn, [store_code]):
            raise UnknownStoreError(store_code)
        total = conn.execute(select(func.count()).select_from(g).where(*where)).scalar_one()
        rows = [StoreGroupRow(chat_id=r.chat_id, name=r.name or "", owner_userid=r.owner_userid,
                              owner_name=r.owner_name or "", members=r.members, store_code=r.store_code,
                              store_name=r.store_name, status=r.status)
                for r in conn.execute(query)]
    return GroupListing(rows, total)


# ------------------------------------------------------------------------------------------
# The CSV file: chat_id,store_code


@dataclass(frozen=True)
class AssignmentRow:
    """One line of the file: put ``chat_id`` on ``store_code`` (None: take it off its store)."""

    chat_id: str
    store_code: str | None
    line: int = field(default=0, compare=False)


@dataclass
class AssignmentParseResult:
    rows: list[AssignmentRow]
    errors: list[RowError]
    encoding: str  # as in csvio.ParseResult
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_GROUP_NAME_COLUMNS = frozenset({"name", "group", "group_name", "群", "群名", "群名称", "客户群", "客户群名称"})


def _column_hint(name: str, column: str | None = None) -> str:
    """Why header name ``name`` is probably meant as ``column`` (any column when None); '' if not."""
    if name in _GROUP_NAME_COLUMNS and column in (None, "chat_id"):
        return (f" ('{name}' looks like a column of group names; this file needs each group's chat id in a "
                f"'chat_id' column: {_LIST_HINT})")
    target = _COLUMN_HINTS.get(name)
    if target and column in (None, target):
        return f" (did you mean '{target}' instead of '{name}'?)"
    return ""


def parse_assignments(data: str | bytes) -> AssignmentParseResult:
    """Parse a ``chat_id,store_code`` CSV (header required; columns in any order, case-insensitive;
    other columns, such as a group name kept for the reader, are ignored and noted).

    An empty ``store_code`` cell means "take the group off its store". Every problem becomes a
    :class:`~scrm.stores.csvio.RowError` with its file line; ``rows`` holds the good lines. The
    same chat id on two lines is fine when they agree and an error when they name different stores.
    Whether the groups and stores exist is checked by :func:`import_assignments`.
    """
    errors: list[RowError] = []
    try:
        text, encoding, notes = decode(data)
    except _DecodeError as exc:
        return AssignmentParseResult([], [exc.error], "unknown")
    expected = f"the first line must be the header naming the columns: {','.join(ASSIGNMENT_COLUMNS)}"
    rows: list[AssignmentRow] = []
    try:
        records = _records(text)
        header = next(records, None)
        names = [_clean(c).lower() for c in header[1]] if header else []
        if header is None or not any(names):
            errors.append(RowError(1, None, f"the file is empty: {expected}" if header is None
                                   else f"line 1 is empty: {expected}"))
            return AssignmentParseResult([], errors, encoding, notes)
        position: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in position:
                errors.append(RowError(1, name, f"column '{name}' appears twice in the header"))
            elif name in ASSIGNMENT_COLUMNS:
                position[name] = i
        others = [n for n in names if n and n not in ASSIGNMENT_COLUMNS]
        if not position and not any(_column_hint(n) for n in others):
            shown = ",".join(_clean(c) for c in header[1])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            errors.append(RowError(1, None, f"no header: {expected} (found '{shown}')"))
            return AssignmentParseResult([], errors, encoding, notes)
        for column in ASSIGNMENT_COLUMNS:
            if column not in position:
                hint = next((_column_hint(n, column) for n in others if _column_hint(n, column)), "")
                errors.append(RowError(1, column, f"the header has no '{column}' column (required){hint}; {expected}"))
        if errors:
            return AssignmentParseResult([], errors, encoding, notes)
        ignored = [_clean(header[1][i]) for i, n in enumerate(names) if n and n not in ASSIGNMENT_COLUMNS]
        if ignored:
            notes.append(f"not imported, for the reader only: column{'s' if len(ignored) > 1 else ''} "
                         f"{', '.join(ignored)}")
        seen: dict[str, AssignmentRow] = {}
        for line, cells in records:
            values = {c: _clean(cells[i]) if i < len(cells) else "" for c, i in position.items()}
            if not any(_clean(c) for c in cells):
                continue  # blank line, or a row of empty cells Excel left behind
            row = _assignment_row(line, values["chat_id"], values["store_code"], seen, errors)
            if row is not None and row.chat_id not in seen:
                seen[row.chat_id] = row
                rows.append(row)
    except _DecodeError as exc:
        errors.append(exc.error)
    errors.sort(key=lambda e: (e.line, ASSIGNMENT_COLUMNS.index(e.column) if e.column in ASSIGNMENT_COLUMNS else -1))
    return AssignmentParseResult(rows, errors, encoding, notes)


def _assignment_row(line: int, chat_id: str, store_code: str, seen: dict[str, AssignmentRow],
                    errors: list[RowError]) -> AssignmentRow | None:
    before = len(errors)
    if not chat_id:
        errors.append(RowError(line, "chat_id", f"chat_id is empty: every line names one group by its chat id "
                                                f"({_LIST_HINT})"))
    if store_code and not _CODE_RE.fullmatch(store_code):
        errors.append(RowError(line, "store_code", _code_error(store_code)))
    if len(errors) > before:
        return None
    row = AssignmentRow(chat_id, store_code or None, line)
    earlier = seen.get(chat_id)
    if earlier is not None and earlier.store_code != row.store_code:
        def where(code: str | None) -> str:
            return f"store '{code}'" if code else "no store"
        errors.append(RowError(line, "chat_id", f"group '{chat_id}' is already on line {earlier.line} with "
                                                f"{where(earlier.store_code)}, here with {where(row.store_code)}: "
                                                "keep one of the lines"))
        return None
    return row


def import_assignments(engine: Engine, rows: Iterable[AssignmentRow], *, dry_run: bool = False) -> AssignReport:
    """Apply the lines of a parsed file in ONE transaction, all or nothing: each group goes to its
    line's store, or off its store when the line has none.

    Checked like :func:`assign_groups` (the group exists and, when given a store, is active; the
    store exists and is open), per line: any problem raises :class:`GroupAssignmentError` whose
    problems carry the file line and column, and nothing is written. A line that changes nothing
    is never refused, so a kept sheet (or an :func:`export_assignments`) imports again after some
    of its groups were dismissed or stores closed, and reports everything unchanged. ``rows`` should
    come from a :func:`parse_assignments` without errors; the same chat id twice with different
    stores raises ValueError.
    """
    by_chat: dict[str, AssignmentRow] = {}
    for row in rows:
        earlier = by_chat.setdefault(row.chat_id, row)
        if earlier.store_code != row.store_code:
            raise ValueError(f"chat id {row.chat_id!r} appears with two stores")
    lines = list(by_chat.values())
    report = AssignReport(dry_run=dry_run)
    with engine.begin() as conn:
        stores = _load_stores(conn, [r.store_code for r in lines if r.store_code])
        groups = _load_groups(conn, [r.chat_id for r in lines], lock=not dry_run)
        named = _named(conn, [r.chat_id for r in lines if r.chat_id not in groups])
        problems: list[GroupProblem] = []
        for row in lines:
            group = groups.get(row.chat_id)
            if group is None:
                problems.append(GroupProblem(_missing_group(row.chat_id, named), row.chat_id, row.line, "chat_id"))
            elif group.store_code == row.store_code:
                continue  # changes nothing: fine even if the group was dismissed or the store closed since
            elif row.store_code and group.status != GroupStatus.active:
                problems.append(GroupProblem(_dismissed(group), row.chat_id, row.line, "chat_id"))
            store_problem = _store_problem(row.store_code, stores) if row.store_code else None
            if store_problem:
                problems.append(GroupProblem(store_problem, row.chat_id, row.line, "store_code"))
        if problems:
            raise GroupAssignmentError(problems)
        for row in sorted(lines, key=lambda r: r.line):
            _record(report, groups[row.chat_id], row.chat_id, row.store_code)
        if not dry_run:
            _write(conn, report.changes)
    return report


EXPORT_COLUMNS: tuple[str, ...] = (*ASSIGNMENT_COLUMNS, "name", "owner", "members", "status")


def export_assignments(engine: Engine, *, unassigned: bool = False) -> str:
    """Every group (or, ``unassigned``, every active group without a store) as CSV text, ordered
    like :func:`list_store_groups`: the file to fill in ``store_code`` in Excel and import back.

    The columns after ``store_code`` are for the reader (the import ignores them); exported and
    imported unchanged, the file changes nothing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for r in list_store_groups(engine, unassigned=unassigned):
        owner = f"{r.owner_name} ({r.owner_userid})" if r.owner_name else (r.owner_userid or "")
        writer.writerow([r.chat_id, r.store_code or "", r.name, owner, r.members, r.status])
    return out.getvalue()

"""The ledger side of the SOP engine: plan into the database, claim due posts, expire stale ones.

Planning reads the day's ledger first: posts already sent, being sent, due, or past their time
are kept and count against the limits; only future ``planned`` rows are replaced, so a template
change or a group leaving a target set changes the future and never what was sent. On
PostgreSQL a transaction-scoped advisory lock serialises two schedulers planning the same day;
the unique constraints on the ledger hold the limits whatever happens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from scrm.db import utcnow
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.layers.models import CustomerLayer
from scrm.logs import get_logger
from scrm.sop.models import HARD_MAX_POSTS_PER_DAY, Audience, PostStatus, SopPost
from scrm.sop.planner import (
    LEDGER_FULL,
    LEDGER_MASS_TAKEN,
    LEDGER_REASONS,
    DayPlan,
    Dropped,
    FixedPost,
    GroupIndex,
    GroupInfo,
    Limits,
    PlannedPost,
    plan_day,
    window_end_seconds,
)
from scrm.sop.template import Channel, SopTemplate
from scrm.stores.models import Store

log = get_logger(__name__)
REPLACE_GUARD = dt.timedelta(seconds=60)  # a post this close to its time is left alone
EXTERNAL_MEMBER = 2  # group_members.member_type of a customer (1 is an employee)


@dataclass
class ReplanResult:
    day: dt.date
    plan: DayPlan
    kept: int = 0
    inserted: int = 0
    removed: int = 0
    conflicts: int = 0  # rows another scheduler wrote first

    @property
    def dropped(self) -> Counter:
        """Candidate posts not written, by reason: the planner's drops and the ledger's
        (:data:`~scrm.sop.planner.LEDGER_FULL`, :data:`~scrm.sop.planner.LEDGER_MASS_TAKEN`)."""
        out: Counter = Counter()
        for (_, _, reason), n in self.plan.dropped_counts.items():
            out[reason] += n
        return out


def load_groups(conn: Connection, *, member_layers: bool = True) -> list[GroupInfo]:
    """Active customer groups with what templates can target (the store's city, the layers of
    their members), and whether their store exists (a code naming no store renders as no store).

    ``member_layers``: each group's share of active customers (external members still in it) per
    customer layer, in one grouped query over group_members and customer_layers; False skips it
    (no template targets member_layers)."""
    g, s = CustomerGroup.__table__.c, Store.__table__.c
    rows = conn.execute(
        select(g.chat_id, g.owner_userid, g.store_code, g.tags, g.layer, g.name, s.city,
               s.code.label("known_store"))
        .select_from(CustomerGroup.__table__.outerjoin(Store.__table__, s.code == g.store_code))
        .where(g.status == GroupStatus.active)
    )
    shares = member_layer_shares(conn) if member_layers else {}
    return [
        GroupInfo(chat_id=r.chat_id, owner=r.owner_userid, store_code=r.store_code, city=r.city or None,
                  tags=frozenset(r.tags or ()), layer=r.layer, name=r.name or "",
                  store_missing=bool(r.store_code) and r.known_store is None,
                  member_layers=shares.get(r.chat_id, ()))
        for r in rows
    ]


def member_layer_shares(conn: Connection) -> dict[str, tuple[tuple[str, float], ...]]:
    """chat_id -> ((layer, share), ...) for active groups: of the group's active external members,
    the fraction whose customer layer is each layer. A member the layering pass has not placed yet
    counts in the whole and in no layer. One query: members left-joined to their layer, counted by
    (group, layer)."""
    m, cl, g = GroupMember.__table__.c, CustomerLayer.__table__.c, CustomerGroup.__table__.c
    if conn.dialect.name == "postgresql":
        # One big hash join and aggregate: compiling it (JIT) costs more than it saves here.
        conn.exec_driver_sql("SET LOCAL jit = off")
    rows = conn.execute(
        select(m.chat_id, cl.layer, func.count().label("n"))
        .select_from(GroupMember.__table__
                     .join(CustomerGroup.__table__, g.chat_id == m.chat_id)
                     .outerjoin(CustomerLayer.__table__, cl.external_userid == m.member_id))
        .where(m.state == MemberState.member, m.member_type == EXTERNAL_MEMBER, g.status == GroupStatus.active)
        .group_by(m.chat_id, cl.layer)
    )
    counts: dict[str, dict[str | None, int]] = defaultdict(dict)
    for r in rows:
        counts[r.chat_id][r.layer] = r.n
    out: dict[str, tuple[tuple[str, float], ...]] = {}
    for chat_id, by_layer in counts.items():
        total = sum(by_layer.values())
        out[chat_id] = tuple(sorted((layer, n / total) for layer, n in by_layer.items() if layer is not None))
    return out


def local_window(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz)
    return start.astimezone(dt.UTC), (start + dt.timedelta(days=1)).astimezone(dt.UTC)


def local_now(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """``now`` (aware) as the naive local wall-clock time the planner works in."""
    return now.astimezone(tz).replace(tzinfo=None)


def _window_end(at_local: dt.datetime, limits: Limits, tz: ZoneInfo) -> dt.datetime:
    """An unsent post expires after ``limits.window``, at quiet hours, or at midnight, whichever is
    first (the planner's rule, so it never plans a post whose window has already ended)."""
    midnight = dt.datetime.combine(at_local.date(), dt.time(0, 0))
    seconds = window_end_seconds(int((at_local - midnight).total_seconds()), limits)
    return (midnight + dt.timedelta(seconds=seconds)).replace(tzinfo=tz).astimezone(dt.UTC)


@dataclass
class DayLedger:
    """A day's ledger as planning sees it: posts to keep and count, and future planned posts
    that a new plan may replace."""

    fixed: dict[str, list[FixedPost]]
    # (chat_id, template_id, step_key) -> LedgerRow: the future planned rows a new plan may replace.
    replaceable: dict[tuple[str, str, str], LedgerRow]
    used_slots: dict[str, set[int]]
    used_mass: dict[str, set[int]]


class LedgerRow(NamedTuple):
    """What fitting a plan needs of a replaceable ledger row (not the whole row: 300,000 of them)."""

    id: int
    slot: int
    mass_seq: int | None
    template_digest: str
    channel: str
    sender: str
    scheduled_for: dt.datetime


def read_day(conn: Connection, day: dt.date, *, now: dt.datetime, tz: ZoneInfo) -> DayLedger:
    c = SopPost.__table__.c
    ledger = DayLedger(defaultdict(list), {}, defaultdict(set), defaultdict(set))
    guard = now + REPLACE_GUARD
    planned = PostStatus.planned.value
    local: dict[dt.datetime, dt.datetime] = {}  # UTC time -> local wall clock (posts share their times)
    # Group posts only: a customer's 1:1 journey messages share the ledger but not a group's day.
    rows = conn.execute(
        select(c.id, c.chat_id, c.template_id, c.step_key, c.status, c.scheduled_for, c.slot, c.mass_seq,
               c.channel, c.template_digest, c.sender)
        .where(c.day == day, c.audience == Audience.group)
    )
    for id_, chat_id, template_id, step_key, status, scheduled_for, slot, mass_seq, channel, digest, sender in rows:
        if status == planned and scheduled_for > guard:
            ledger.replaceable[(chat_id, template_id, step_key)] = LedgerRow(
                id_, slot, mass_seq, digest, channel, sender, scheduled_for)
        else:
            at_local = local.get(scheduled_for)
            if at_local is None:
                at_local = local[scheduled_for] = scheduled_for.astimezone(tz).replace(tzinfo=None)
            ledger.fixed[chat_id].append(FixedPost(chat_id, template_id, step_key, at_local, channel))
            ledger.used_slots[chat_id].add(slot)
            if mass_seq is not None:
                ledger.used_mass[chat_id].add(mass_seq)
    return ledger


# The columns fit_to_ledger hands out for each new row, in the order of LedgerFit.new_rows' tuples.
NEW_ROW_COLUMNS = ("chat_id", "slot", "mass_seq", "template_id", "step_key", "template_digest", "channel",
                   "sender", "priority", "scheduled_for", "window_ends_at")


@dataclass
class LedgerFit:
    """What writing a plan into a day's ledger means: replaceable rows kept as they are, rows the
    plan no longer wants, and new rows (each with its slot and, for a mass send, its mass_seq), as
    tuples of :data:`NEW_ROW_COLUMNS` in (chat_id, template_id, step_key) order."""

    kept: list[int]
    stale: list[int]
    new_rows: list[tuple]


def fit_to_ledger(plan: DayPlan, ledger: DayLedger, limits: Limits, *, tz: ZoneInfo) -> LedgerFit:
    """Match ``plan`` against ``ledger`` and hand out slots and mass sequence numbers.

    A planned post that finds no free slot, or no free mass sequence number for a mass send (the
    ledger holds rows the planner counted differently), is not written: it is taken out of
    ``plan.posts`` and counted in ``plan.dropped_counts`` (and listed in ``plan.dropped``) as
    :data:`LEDGER_FULL` or :data:`LEDGER_MASS_TAKEN`, like every other drop. Writes nothing, so
    the dry run (`scrm sop plan`) reports the same drops as the scheduler.

    New rows take a group's lowest free slot (and mass sequence number), posts in (template id,
    step key) order. The plan's times are converted once per distinct time, not once per post."""
    used_slots = defaultdict(set, {k: set(v) for k, v in ledger.used_slots.items()})
    used_mass = defaultdict(set, {k: set(v) for k, v in ledger.used_mass.items()})
    times: dict[dt.datetime, tuple[dt.datetime, dt.datetime]] = {}  # local at -> (UTC at, UTC window end)

    def utc_times(at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        both = times.get(at)
        if both is None:
            both = times[at] = (at.replace(tzinfo=tz).astimezone(dt.UTC), _window_end(at, limits, tz))
        return both

    desired: dict[tuple[str, str, str], PlannedPost] = {}
    for p in plan.posts:
        desired[(p.chat_id, p.template_id, p.step_key)] = p
    fit = LedgerFit(kept=[], stale=[], new_rows=[])
    for key, r in ledger.replaceable.items():
        want = desired.get(key)
        if want is not None and (r.template_digest, r.channel, r.sender, r.scheduled_for) == (
            want.digest, want.channel, want.sender, utc_times(want.at)[0]
        ):
            del desired[key]
            used_slots[key[0]].add(r.slot)
            if r.mass_seq is not None:
                used_mass[key[0]].add(r.mass_seq)
            fit.kept.append(r.id)
        else:
            fit.stale.append(r.id)

    not_written: set[int] = set()

    def drop(p: PlannedPost, reason: str) -> None:
        plan.dropped_counts[(p.template_id, p.step_key, reason)] += 1
        plan.dropped.append(Dropped(p.chat_id, p.template_id, p.step_key, p.nominal, reason))
        not_written.add(id(p))

    mass = Channel.mass_send.value
    slots_of_day = range(1, HARD_MAX_POSTS_PER_DAY + 1)
    mass_of_day = range(1, limits.max_mass_sends_per_group_per_day + 1)
    current: str | None = None
    free_slots: list[int] = []
    free_mass: list[int] = []
    append = fit.new_rows.append
    for key in sorted(desired):
        chat_id = key[0]
        if chat_id != current:  # keys are sorted: one group's posts come together
            current = chat_id
            taken, taken_mass = used_slots.get(chat_id, ()), used_mass.get(chat_id, ())
            free_slots = [s for s in slots_of_day if s not in taken]
            free_mass = [s for s in mass_of_day if s not in taken_mass]
        p = desired[key]
        if not free_slots:
            drop(p, LEDGER_FULL)
            continue
        mass_seq = None
        if p.channel == mass:
            if not free_mass:
                drop(p, LEDGER_MASS_TAKEN)
                continue
            mass_seq = free_mass.pop(0)
        at_utc, window_ends = utc_times(p.at)
        append((chat_id, free_slots.pop(0), mass_seq, p.template_id, p.step_key, p.digest, p.channel, p.sender,
                p.priority, at_utc, window_ends))
    if not_written:
        plan.posts[:] = [p for p in plan.posts if id(p) not in not_written]
    return fit


def _lock_day(conn: Connection, day: dt.date) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"sop:{day}".encode())})


PG_INSERT_CHUNK = 50_000  # rows a statement on PostgreSQL (arrays of this many values a column)
_PG_ARRAY_TYPES = ("varchar[]", "int[]", "int[]", "varchar[]", "varchar[]", "varchar[]", "varchar[]", "varchar[]",
                   "int[]", "timestamptz[]", "timestamptz[]")


def _delete_stale(conn: Connection, ids: list[int]) -> int:
    """Delete the stale rows that are still ``planned`` (one claimed meanwhile stays); how many went."""
    if not ids:
        return 0
    if conn.dialect.name == "postgresql":
        # One statement with the ids as an array, not 500-id chunks of bound parameters.
        return conn.execute(text("DELETE FROM sop_posts WHERE id = ANY(:ids) AND status = :planned"),
                            {"ids": ids, "planned": PostStatus.planned.value}).rowcount
    c = SopPost.__table__.c
    removed = 0
    for i in range(0, len(ids), 500):
        removed += conn.execute(
            delete(SopPost.__table__).where(c.id.in_(ids[i:i + 500]), c.status == PostStatus.planned)
        ).rowcount
    return removed


def _insert_new(conn: Connection, day: dt.date, rows: list[tuple], stamp: dt.datetime) -> int:
    """Insert the new rows as ``planned``; a row another scheduler's row already holds the slot,
    mass sequence number or step of is skipped (ON CONFLICT DO NOTHING). Returns how many went in."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        # One INSERT ... SELECT FROM unnest(arrays) a 50,000 rows: the values travel as one array a
        # column instead of one bound parameter a value, and the rowcount says how many went in.
        columns = ", ".join(NEW_ROW_COLUMNS)
        arrays = ", ".join(f"CAST(:c{i} AS {t})" for i, t in enumerate(_PG_ARRAY_TYPES))
        statement = text(
            f"INSERT INTO sop_posts ({columns}, day, audience, status, attempts, created_at, updated_at) "
            f"SELECT {columns}, :day, :audience, :status, 0, :stamp, :stamp FROM unnest({arrays}) "
            f"AS t({columns}) ON CONFLICT DO NOTHING"
        )
        inserted = 0
        for i in range(0, len(rows), PG_INSERT_CHUNK):
            columns_of_chunk = zip(*rows[i:i + PG_INSERT_CHUNK], strict=True)
            params: dict[str, Any] = {f"c{n}": list(col) for n, col in enumerate(columns_of_chunk)}
            params.update(day=day, audience=Audience.group.value, status=PostStatus.planned.value, stamp=stamp)
            inserted += conn.execute(statement, params).rowcount
        return inserted
    table = SopPost.__table__
    inserted = 0
    for i in range(0, len(rows), 1000):
        chunk = [dict(zip(NEW_ROW_COLUMNS, row, strict=True), day=day, status=PostStatus.planned, attempts=0,
                      created_at=stamp, updated_at=stamp) for row in rows[i:i + 1000]]
        inserted += len(conn.execute(sqlite_insert(table).on_conflict_do_nothing().returning(table.c.id), chunk).all())
    return inserted


def replan_day(
    engine: Engine,
    templates: list[SopTemplate],
    day: dt.date,
    limits: Limits,
    *,
    tz: ZoneInfo,
    now: dt.datetime | None = None,
    window: dt.timedelta | None = None,
    groups: list[GroupInfo] | None = None,
) -> ReplanResult:
    """Plan ``day`` into the ledger as of ``now``: posts already kept are counted, future planned
    rows are replaced by the new plan, and posts whose window has already ended are not written
    (the plan counts them as too late). ``window`` overrides ``limits.window``."""
    now = now or utcnow()
    if window is not None:
        limits = dataclasses.replace(limits, window=window)
    with engine.begin() as conn:
        _lock_day(conn, day)
        if groups is None:
            # Members' layer shares are one grouped query over every membership: only when a template uses them.
            groups = load_groups(conn, member_layers=any(t.targets.member_layers for t in templates))
        ledger = read_day(conn, day, now=now, tz=tz)
        plan = plan_day(day, templates, GroupIndex(groups), limits, fixed=ledger.fixed, now=local_now(now, tz))
        result = ReplanResult(day=day, plan=plan)

        fitted = fit_to_ledger(plan, ledger, limits, tz=tz)
        del ledger
        result.kept = len(fitted.kept)
        result.removed = _delete_stale(conn, fitted.stale)
        result.inserted = _insert_new(conn, day, fitted.new_rows, utcnow())
        result.conflicts = len(fitted.new_rows) - result.inserted
    in_ledger = {reason: result.dropped[reason] for reason in LEDGER_REASONS if result.dropped[reason]}
    log.info("sop_replanned", day=str(day), kept=result.kept, inserted=result.inserted, removed=result.removed,
             conflicts=result.conflicts, dropped=sum(result.dropped.values()), **in_ledger)
    if in_ledger:
        # The planner counted the ledger one way and the ledger's slots said otherwise: say which groups.
        log.warning("sop_replan_ledger_drops", day=str(day), **in_ledger,
                    chat_ids=sorted({d.chat_id for d in plan.dropped if d.reason in LEDGER_REASONS})[:20])
    return result


def expire_overdue(engine: Engine, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    c = SopPost.__table__.c
    with engine.begin() as conn:
        return conn.execute(
            update(SopPost.__table__)
            .where(c.status.in_((PostStatus.planned, PostStatus.due)), c.window_ends_at <= now)
            .values(status=PostStatus.expired, updated_at=now)
        ).rowcount


def claim_due(engine: Engine, now: dt.datetime | None = None, *, limit: int = 2000) -> dict[str, list[int]]:
    """Move posts whose time has come out of ``planned``, each exactly once even with two
    schedulers: mass sends, and robot posts for groups that have a robot, to ``sending`` (a worker
    sends them); the others to ``due`` (the owner sends them from the toolbar page; a robot post
    for a group without a robot becomes an owner task). Returns ids by channel."""
    now = now or utcnow()
    table = SopPost.__table__
    c = table.c
    g = CustomerGroup.__table__.c
    with_robot = select(g.chat_id).where(g.robot_webhook_key.is_not(None))
    worker_sends = (c.channel == Channel.mass_send.value) | (
        (c.channel == Channel.group_robot.value) & c.chat_id.in_(with_robot))
    claimed: dict[str, list[int]] = defaultdict(list)
    with engine.begin() as conn:
        ids = [r.id for r in conn.execute(
            select(c.id).where(c.status == PostStatus.planned, c.scheduled_for <= now, c.window_ends_at > now)
            .order_by(c.scheduled_for, c.id).limit(limit)
        )]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for by_worker in (True, False):
                rows = conn.execute(
                    update(table)
                    .where(c.id.in_(chunk), c.status == PostStatus.planned,
                           worker_sends if by_worker else ~worker_sends)
                    .values(status=PostStatus.sending if by_worker else PostStatus.due,
                            attempts=c.attempts + (1 if by_worker else 0), updated_at=now)
                    .returning(c.id, c.channel)
                ).all()
                for r in rows:
                    # Every post left to a person is an owner task (a robot post without a robot too).
                    claimed[r.channel if by_worker else Channel.owner_task.value].append(r.id)
    return dict(claimed)


def requeue_stuck(engine: Engine, now: dt.datetime | None = None, *,
                  older_than: dt.timedelta = dt.timedelta(minutes=10)) -> list[int]:
    """Mass posts left in ``sending`` (the queue was down, a worker died) go back to a worker.
    Their attempt count goes up, which makes the sender look for a task WeCom may already have
    created before it calls add_msg_template again."""
    now = now or utcnow()
    table, c = SopPost.__table__, SopPost.__table__.c
    with engine.begin() as conn:
        return [r.id for r in conn.execute(
            update(table).where(c.status == PostStatus.sending, c.claimed_by.is_(None), c.updated_at < now - older_than)
            .values(attempts=c.attempts + 1, updated_at=now).returning(c.id)
        )]

"""The layering pass: evaluate the rules for every customer (the nightly full pass) or for the few
an event touched (the re-layer), record moves in ``layer_changes`` and keep ``customer_layers`` and
``customer_groups.layer`` current.

Set-based: the compiled SELECT (``scrm.layers.compile``) fills a temporary table, the differences
against ``customer_layers`` go to a second one, and a handful of INSERT … SELECT / UPDATE … FROM
statements apply them in one transaction, so a million customers never loop in Python and an
unchanged customer is never rewritten. Passes are serialised (a PostgreSQL advisory transaction
lock, SQLite's write lock taken before the first read) and the history insert is conditional on
the stored layer, so two passes at once record each move once.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.sqltypes import UTCDateTime

from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.layers.compile import compile_pass, ids_filter
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.report import PassReport
from scrm.layers.rules import RuleSet
from scrm.logs import get_logger

log = get_logger(__name__)

_LOCK_KEY = zlib.crc32(b"scrm:layers:pass")
_WORK_MEM = "256MB"  # PostgreSQL, per sort and index build of the pass' writes (the server's default is 4MB)
_SQLITE_IDS = 400  # ids per compiled query on SQLite (one expanding parameter, used in each subquery)

_meta = sa.MetaData()
# What the rules say now, per evaluated customer.
_pass = sa.Table("_layer_pass", _meta,
                 sa.Column("external_userid", sa.String, primary_key=True),
                 sa.Column("layer", sa.String, nullable=False),
                 sa.Column("rule_id", sa.String),
                 sa.Column("home_store", sa.String),
                 sa.Column("tag_bits", sa.BigInteger, nullable=False),
                 prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
# The evaluated customers whose stored row must change (or be created).
_diff = sa.Table("_layer_diff", _meta,
                 sa.Column("external_userid", sa.String, primary_key=True),
                 sa.Column("stored", sa.Boolean, nullable=False),
                 sa.Column("old_layer", sa.String),
                 sa.Column("layer", sa.String, nullable=False),
                 sa.Column("rule_id", sa.String),
                 sa.Column("home_store", sa.String),
                 sa.Column("tag_bits", sa.BigInteger, nullable=False),
                 sa.Column("changed", sa.Boolean, nullable=False),  # layer, rule, store or bits differ
                 prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
# A re-layer's groups: those the evaluated customers have a membership row in.
_chats = sa.Table("_layer_chats", _meta, sa.Column("chat_id", sa.String, primary_key=True),
                  prefixes=["TEMPORARY"], postgresql_on_commit="DROP")


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before the first read


def _begin(conn: Connection, *, lock: bool) -> None:
    if lock:
        _lock(conn)  # SQLite: BEGIN IMMEDIATE opens the transaction itself
    if not conn.in_transaction():
        conn.begin()
    if conn.dialect.name == "postgresql":
        # JIT compiling these wide CASE expressions costs more (~1 s a statement) than it saves.
        conn.exec_driver_sql("SET LOCAL jit = off")


def _drop_temp(conn: Connection) -> None:
    for t in (_chats, _diff, _pass):
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {t.name}"))


def _keyless(table: sa.Table) -> sa.Table:
    """The same temporary table without its primary key: PostgreSQL keeps temporary tables in a
    small per-session buffer (temp_buffers, 8MB by default), where a million inserts into a
    key index in the order customers happen to be stored cost more than the whole evaluation.
    Every join on these tables is a hash join or a probe of the stored table's own key."""
    return sa.Table(table.name, sa.MetaData(), *[sa.Column(c.name, c.type, nullable=c.nullable and not c.primary_key)
                                                 for c in table.c],
                    prefixes=["TEMPORARY"], postgresql_on_commit="DROP")


_PG_TEMP = (_keyless(_pass), _keyless(_diff), _chats)


def _create_temp(conn: Connection) -> None:
    _drop_temp(conn)  # a pooled SQLite connection may still hold them from a failed pass
    for t in (_PG_TEMP if conn.dialect.name == "postgresql" else (_pass, _diff, _chats)):
        t.create(conn)


def _fill(conn: Connection, ruleset: RuleSet, now: dt.datetime, ids: Sequence[str] | None) -> None:
    dialect = conn.dialect.name
    cols = [c.name for c in _pass.c]
    if ids is None:
        conn.execute(_pass.insert().from_select(cols, compile_pass(ruleset, now=now, dialect=dialect)))
    elif dialect == "postgresql":
        conn.execute(_pass.insert().from_select(cols, compile_pass(ruleset, now=now, dialect=dialect, only=ids)))
    else:
        for i in range(0, len(ids), _SQLITE_IDS):
            part = ids[i:i + _SQLITE_IDS]
            conn.execute(_pass.insert().from_select(cols, compile_pass(ruleset, now=now, dialect=dialect, only=part)))
    if dialect == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {_pass.name}")  # temp tables get no autovacuum statistics


def _fill_diff(conn: Connection, ids: Sequence[str] | None, *, mark_dirty: bool) -> None:
    """The rows to write: new customers, changed ones, and (``mark_dirty``) any not yet tag-dirty."""
    p = _pass.c
    stored: Any = CustomerLayer.__table__
    if ids is not None and conn.dialect.name == "postgresql":
        # A few thousand index lookups, not a scan of every stored row.
        stored = sa.select(stored).where(ids_filter(stored.c.external_userid, ids, "postgresql")).subquery("lcl")
    cl = stored.c
    changed = sa.or_(cl.layer.is_(None), cl.layer != p.layer, cl.rule_id.is_distinct_from(p.rule_id),
                     cl.home_store.is_distinct_from(p.home_store), cl.tag_bits != p.tag_bits)
    wanted = sa.or_(changed, cl.tags_dirty.is_(False)) if mark_dirty else changed
    rows = (sa.select(p.external_userid, cl.layer.is_not(None), cl.layer, p.layer, p.rule_id, p.home_store,
                      p.tag_bits, sa.case((changed, sa.true()), else_=sa.false()))
            .select_from(_pass.outerjoin(stored, cl.external_userid == p.external_userid))
            .where(wanted))
    conn.execute(_diff.insert().from_select([c.name for c in _diff.c], rows))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {_diff.name}")


def _report(conn: Connection, report: PassReport) -> None:
    p, d = _pass.c, _diff.c
    for layer, rule_id, n in conn.execute(sa.select(p.layer, p.rule_id, sa.func.count())
                                          .group_by(p.layer, p.rule_id)):
        report.by_layer_rule[(layer, rule_id)] += n
        report.customers += n
    moved = sa.or_(d.old_layer.is_(None), d.old_layer != d.layer)
    for old, new, n in conn.execute(sa.select(d.old_layer, d.layer, sa.func.count()).where(moved)
                                    .group_by(d.old_layer, d.layer)):
        report.moves[(old, new)] += n
        report.moved += n
    report.changed = conn.execute(sa.select(sa.func.count()).select_from(_diff).where(d.changed.is_(True))).scalar_one()


def _bulk_start(conn: Connection, table: sa.Table, coming: int) -> list[str]:
    """PostgreSQL, when ``coming`` new rows outnumber what ``table`` holds (a first placement):
    drop its non-unique indexes and return their definitions for ``_bulk_end`` to rebuild in the
    same transaction. One sorted build beats a million scattered index inserts (measured on the
    bench's 1M customers: the first pass' writes ~40 s with the indexes in place, ~20 s with the
    rebuild). Until the commit the table is locked against readers (DROP INDEX), which matters
    little while it is (nearly) empty; later passes, with fewer new rows than stored ones, keep
    their indexes and take no such lock."""
    if conn.dialect.name != "postgresql" or coming <= 0:
        return []
    held = conn.execute(sa.select(sa.func.count()).select_from(
        sa.select(sa.literal(1)).select_from(table).limit(coming).subquery())).scalar_one()
    if held >= coming:
        return []
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = CAST(:t AS regclass) AND NOT i.indisunique AND NOT i.indisprimary"),
        {"t": table.name}).all()
    for name, _ in rows:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return [d for _, d in rows]


def _bulk_end(conn: Connection, definitions: list[str]) -> None:
    for d in definitions:
        conn.exec_driver_sql(d)


def _write(conn: Connection, now: dt.datetime, report: PassReport, *, mark_dirty: bool) -> int:
    """History, then the upsert; returns the history rows inserted. Rows go in in key order so
    the primary keys grow at their right edge."""
    d, cl = _diff.c, CustomerLayer.__table__.c
    stamp = sa.literal(now, UTCDateTime())
    if conn.dialect.name == "postgresql":
        # The writes' key-order sorts and index rebuilds in memory. Not for the evaluation: with
        # 256MB its plan hashes every fact table whole and ran slower (1M customers: 20 s against
        # 12.6 s with the server's 4MB).
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{_WORK_MEM}'")
        conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{_WORK_MEM}'")
    # History only where the stored layer (read now, under the lock) differs.
    key = d.external_userid.collate("C") if conn.dialect.name == "postgresql" else d.external_userid  # memcmp order
    history = (sa.select(d.external_userid, cl.layer, d.layer, d.rule_id, d.home_store, stamp)
               .select_from(_diff.outerjoin(CustomerLayer.__table__, cl.external_userid == d.external_userid))
               .where(sa.or_(cl.layer.is_(None), cl.layer != d.layer)))
    rebuild = _bulk_start(conn, LayerChange.__table__, report.moved)
    if not rebuild:  # the external_userid index stays: feed it in order
        history = history.order_by(key)
    moved = conn.execute(LayerChange.__table__.insert().from_select(
        ["external_userid", "from_layer", "to_layer", "rule_id", "home_store", "changed_at"], history)).rowcount
    _bulk_end(conn, rebuild)
    tags_changed = sa.or_(cl.layer != d.layer, cl.home_store.is_distinct_from(d.home_store), cl.tag_bits != d.tag_bits)
    conn.execute(sa.update(CustomerLayer.__table__)
                 .where(cl.external_userid == d.external_userid, d.stored.is_(True))
                 .values(layer=d.layer, rule_id=d.rule_id, home_store=d.home_store, tag_bits=d.tag_bits,
                         since=sa.case((cl.layer != d.layer, stamp), else_=cl.since),
                         computed_at=stamp,
                         tags_dirty=sa.true() if mark_dirty else sa.case((tags_changed, sa.true()),
                                                                          else_=cl.tags_dirty)))
    placed = sum(n for (old, _new), n in report.moves.items() if old is None)
    rebuild = _bulk_start(conn, CustomerLayer.__table__, placed)
    conn.execute(CustomerLayer.__table__.insert().from_select(
        ["external_userid", "layer", "rule_id", "home_store", "tag_bits", "since", "computed_at", "tags_dirty"],
        sa.select(d.external_userid, d.layer, d.rule_id, d.home_store, d.tag_bits, stamp, stamp, sa.true())
        .where(d.stored.is_(False)).order_by(key)))
    _bulk_end(conn, rebuild)
    return moved


def _layer_rank(ruleset: RuleSet, layer: Any) -> Any:
    """Ties between layers go to the one listed first in the rule set (unknown layers last)."""
    return sa.case(*[(layer == lay.id, i) for i, lay in enumerate(ruleset.layers)], else_=len(ruleset.layers))


def _group_targets(ruleset: RuleSet, layers: Any, scoped: bool) -> Any:
    """(chat_id, layer) for the active groups (``scoped``: those in ``_layer_chats``, else all):
    the most common layer among their active external members that have one (NULL when none)."""
    gm, g = GroupMember.__table__.c, CustomerGroup.__table__.c
    where = [gm.state == MemberState.member.value, gm.member_type == 2, g.status == GroupStatus.active.value]
    members: Any = GroupMember.__table__
    if scoped:
        members = _chats.join(members, gm.chat_id == _chats.c.chat_id)
    counts = (sa.select(gm.chat_id.label("chat_id"), layers.c.layer.label("layer"), sa.func.count().label("n"))
              .select_from(members.join(CustomerGroup.__table__, g.chat_id == gm.chat_id)
                           .join(layers, layers.c.external_userid == gm.member_id))
              .where(*where).group_by(gm.chat_id, layers.c.layer).subquery("lgc"))
    ranked = sa.select(counts.c.chat_id, counts.c.layer, sa.func.row_number().over(
        partition_by=counts.c.chat_id,
        order_by=(counts.c.n.desc(), _layer_rank(ruleset, counts.c.layer), counts.c.layer)).label("rn")
    ).subquery("lgr")
    top = sa.select(ranked.c.chat_id, ranked.c.layer).where(ranked.c.rn == 1).subquery("lgt")
    groups: Any = CustomerGroup.__table__
    if scoped:
        groups = _chats.join(groups, g.chat_id == _chats.c.chat_id)
    return (sa.select(g.chat_id.label("chat_id"), top.c.layer.label("layer"))
            .select_from(groups.outerjoin(top, top.c.chat_id == g.chat_id))
            .where(g.status == GroupStatus.active.value).subquery("lgl"))


def _relayer_groups(conn: Connection, ruleset: RuleSet, ids: Sequence[str] | None, *, write: bool) -> int:
    """customer_groups.layer for active groups (``ids``: those these customers have a membership
    row in, joined or left); returns how many groups changed (or would)."""
    g, gm = CustomerGroup.__table__.c, GroupMember.__table__.c
    scoped = ids is not None
    if ids is not None:
        mine = (ids_filter(gm.member_id, ids, "postgresql") if conn.dialect.name == "postgresql"
                else gm.member_id.in_(sa.select(_pass.c.external_userid)))
        conn.execute(_chats.insert().from_select(["chat_id"], sa.select(gm.chat_id).where(mine).distinct()))
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {_chats.name}")
    # A preview reads what the pass computed (it covers every customer); a write reads the table.
    layers: Any = CustomerLayer.__table__ if write else _pass
    target = _group_targets(ruleset, layers, scoped)
    differs = sa.and_(g.chat_id == target.c.chat_id, g.layer.is_distinct_from(target.c.layer))
    if write:
        return conn.execute(sa.update(CustomerGroup.__table__).where(differs).values(layer=target.c.layer)).rowcount
    return conn.execute(sa.select(sa.func.count()).select_from(CustomerGroup.__table__).join(
        target, target.c.chat_id == g.chat_id).where(differs)).scalar_one()


def _run(engine: Engine, ruleset: RuleSet, now: dt.datetime, ids: Sequence[str] | None, *,
         write: bool) -> PassReport:
    started = time.monotonic()
    report = PassReport(written=write)
    relayer = ids is not None
    steps: dict[str, float] = {}
    mark = started

    def step(name: str) -> None:
        nonlocal mark
        t = time.monotonic()
        steps[name] = round(t - mark, 3)
        mark = t

    with engine.connect() as conn:
        try:
            _begin(conn, lock=write)
            _create_temp(conn)
            step("begin")
            _fill(conn, ruleset, now, ids)
            step("evaluate")
            _fill_diff(conn, ids, mark_dirty=relayer and write)
            step("diff")
            _report(conn, report)
            step("count")
            if write:
                inserted = _write(conn, now, report, mark_dirty=relayer)
                if inserted >= 0:  # a driver that cannot tell says -1; the lock makes the diff's count right
                    report.moved = inserted
                step("write")
            report.groups_relayered = _relayer_groups(conn, ruleset, ids, write=write)
            step("groups")
            if write:
                conn.commit()
            else:
                conn.rollback()
            step("commit")
        except BaseException:
            conn.rollback()
            raise
        finally:
            if conn.dialect.name != "postgresql":  # PostgreSQL drops them at the transaction's end
                _drop_temp(conn)
                conn.commit()
    report.seconds = time.monotonic() - started
    if ids is None or len(ids) > 1000:  # where a slow pass spends its time; not per small re-layer
        log.info("layers_pass_steps", customers=report.customers, **steps)
    return report


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime (UTC)")
    return now.astimezone(dt.UTC)


def full_pass(engine: Engine, ruleset: RuleSet, *, now: dt.datetime) -> PassReport:
    """Every customer: history rows for the moves, changed rows rewritten, then every active group's layer."""
    report = _run(engine, ruleset, _utc(now), None, write=True)
    log.info("layers_full_pass", customers=report.customers, changed=report.changed, moved=report.moved,
             groups=report.groups_relayered, seconds=round(report.seconds, 3))
    return report


def relayer_customers(engine: Engine, ruleset: RuleSet, external_userids: Iterable[str], *,
                      now: dt.datetime) -> PassReport:
    """The same for just these customers and the active groups they have a membership row in.
    Every customer evaluated is marked tags_dirty (the event may have changed their follow
    relations, whose tags the tag sync diffs). Ids not in ``customers`` are ignored."""
    ids = sorted({i for i in external_userids if i})
    if not ids:
        return PassReport()
    report = _run(engine, ruleset, _utc(now), ids, write=True)
    log.info("layers_relayered", asked=len(ids), customers=report.customers, changed=report.changed,
             moved=report.moved, groups=report.groups_relayered, seconds=round(report.seconds, 3))
    return report


def preview_pass(engine: Engine, ruleset: RuleSet, *, now: dt.datetime) -> PassReport:
    """What a full pass would do (moves, changed rows, groups), writing nothing (a rule change's
    dry run)."""
    return _run(engine, ruleset, _utc(now), None, write=False)


def layer_history(engine: Engine, external_userid: str) -> list[LayerChange]:
    """A customer's moves, oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(LayerChange).where(LayerChange.external_userid == external_userid)
                                 .order_by(col(LayerChange.changed_at), col(LayerChange.id))))


def layer_counts(engine: Engine) -> Counter:
    """Customers per stored layer (what the CLI's status shows)."""
    c = CustomerLayer.__table__.c
    with engine.connect() as conn:
        return Counter({layer: n for layer, n in conn.execute(sa.select(c.layer, sa.func.count()).group_by(c.layer))})

"""Benchmark: the layering pass and the event-driven re-layer on PostgreSQL at chain scale.

    python bench/relayer.py [--customers 1000000] [--database-url postgresql+psycopg://...]
                            [--db-name scrm_bench_layers] [--batch 5000] [--relayer 50000] [--reuse]

Prints each figure against its goal; asserts nothing about speed. Steps:

1. data: a dedicated database (``--db-name`` on the server of ``--database-url`` or
   ``SCRM_TEST_POSTGRES_URL``), tables from the models, ``--customers`` customers with follow
   relations (store QR states, other states, none), orders (some refunded), counted and uncounted
   clicks, store groups with members, loaded with ``COPY`` (secondary indexes dropped during the
   load and rebuilt after it, then VACUUM ANALYZE);
2. full pass, first: every customer placed (a history row each), goal <= 60 s;
3. full pass, second: the clock one day on and ~1% of customers with a new order, goal <= 60 s;
4. re-layer: ``--relayer`` customers marked in the Redis queue (127.0.0.1:6379, a private key
   prefix) and drained ``--batch`` at a time into ``relayer_customers``, as the worker does:
   customers/s against 1,000/s per worker;
5. a summary table.

Each pass over more than 1,000 customers also logs ``layers_pass_steps``: seconds per step
(evaluate = the compiled SELECT into the temp table, diff, count, write, groups, commit). The
customers are loaded in external_userid order; real ids arrive in no order, which the pass'
keyless temporary tables and key-ordered writes are meant to make irrelevant.

``--reuse`` keeps the data of an earlier run with the same ``--customers``/``--seed`` (the layer
tables are emptied so the first pass is a first pass again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

import scrm.models  # noqa: E402,F401
from bench.pg_data import bench_database, copy_lines, mark_database, ts  # noqa: E402
from scrm.contacts.models import Customer, FollowRelation  # noqa: E402
from scrm.db import make_engine  # noqa: E402
from scrm.groups.models import CustomerGroup, GroupMember  # noqa: E402
from scrm.layers.models import CustomerLayer, LayerChange  # noqa: E402
from scrm.layers.queue import RelayerQueue  # noqa: E402
from scrm.layers.report import PassReport  # noqa: E402
from scrm.layers.rules import RuleSet  # noqa: E402
from scrm.layers.service import full_pass, relayer_customers  # noqa: E402
from scrm.orders.models import Order  # noqa: E402
from scrm.sop.models import LinkClick  # noqa: E402
from scrm.stores.models import Store  # noqa: E402

DB_NAME = "scrm_bench_layers"
PASS_GOAL_S = 60.0
RELAYER_GOAL = 1000.0  # customers/s per worker
NOW = dt.datetime(2026, 11, 30, 19, 30, tzinfo=dt.UTC)
CITIES = ["上海", "杭州", "南京", "苏州", "北京", "广州", "深圳", "成都", "武汉", "西安"]

RULES = RuleSet.model_validate({
    "layers": [{"id": i, "name": n, "operation": "op"} for i, n in (
        ("new", "新客"), ("first", "首购"), ("repeat", "复购"), ("vip", "高价值"), ("dormant", "沉睡"),
        ("churned", "流失"))],
    "default_layer": "new",
    "rules": [
        {"id": "gone", "layer": "churned", "when": {"deleted": True}},
        {"id": "vip", "layer": "vip", "when": {"any": [{"gmv": {"min": 3000}},
                                                       {"gmv": {"min": 1000, "within_days": 90}}]}},
        {"id": "dormant", "layer": "dormant", "when": {"days_since_last_active": {"min": 60}}},
        {"id": "repeat", "layer": "repeat", "when": {"orders": {"min": 2}}},
        {"id": "first", "layer": "first", "when": {"orders": {"min": 1, "max": 1}}},
    ],
    "tags": {"rules": [
        {"id": "click-no-order", "name": "近7天点击未下单",
         "when": {"unique_clicks": {"min": 1, "within_days": 7}, "not": {"orders": {"min": 1, "within_days": 7}}}},
        {"id": "ad", "name": "广告渠道", "when": {"states": ["ad:*"]}},
        {"id": "grouped-east", "name": "华东群客", "when": {"in_group": True, "cities": ["上海", "杭州", "南京"]}},
        {"id": "new-30", "name": "30天新客", "when": {"days_since_added": {"max": 30}}},
    ]},
})


def _secondary_indexes(models) -> list[sa.Index]:
    return [ix for m in models for ix in m.__table__.indexes]


def load(engine, n: int, seed: int) -> dict[str, int]:
    """The corp: returns row counts."""
    rnd = random.Random(seed)
    models = (Store, Customer, FollowRelation, Order, LinkClick, CustomerGroup, GroupMember)
    with engine.begin() as conn:
        for ix in _secondary_indexes(models):
            conn.execute(sa.text(f'DROP INDEX IF EXISTS "{ix.name}"'))
    stores = [f"S{i:04d}" for i in range(max(10, n // 4000))]
    groups = [f"wr{i:06d}" for i in range(max(10, n // 200))]
    counts: dict[str, int] = {}
    now = ts(NOW)
    day = 86400.0

    def ago(max_days: float) -> dt.datetime:
        return NOW - dt.timedelta(seconds=rnd.random() * max_days * day)

    lines_s = [f"{s}\t门店{s}\t\t{rnd.choice(CITIES)}\topen\t{now}\n" for s in stores]
    customers, follows, orders, clicks, members = [], [], [], [], []
    fid = oid = cid = mid = 0
    for i in range(n):
        ext = f"wm{i:08d}"
        lost = rnd.random() < 0.05
        customers.append(f"{ext}\t{ext}\t[]\t{'lost' if lost else 'active'}\t{now}\t{now}\n")
        for k in range(2 if rnd.random() < 0.1 else 1):
            fid += 1
            r = rnd.random()
            state = (f"st:{rnd.choice(stores)}:{fid % 36}" if r < 0.6 else f"sg:{rnd.choice(stores)}" if r < 0.7
                     else f"ad:{rnd.choice(['spring', 'autumn'])}" if r < 0.8 else "\\N")
            status = "deleted_by_customer" if lost else "active"
            follows.append(f"emp{(i + k) % 3000}\t{ext}\t{state}\t[]\t[]\t{status}\t{ts(ago(400))}\t{now}\n")
        for _ in range(rnd.choice((0, 0, 0, 1, 1, 2, 3, 5))):
            oid += 1
            amount = rnd.choice((990, 4900, 19900, 59900, 129900))
            refunded = amount if rnd.random() < 0.05 else (amount // 2 if rnd.random() < 0.05 else 0)
            orders.append(f"shop\tO{oid}\t{ts(ago(400))}\t{amount}\t{refunded}\t[]\t{ext}\t{now}\n")
        for _ in range(rnd.choice((0, 0, 1, 2, 3, 6))):
            cid += 1
            counted = "t" if rnd.random() < 0.8 else "f"
            clicks.append(f"ev{cid}\tL{cid % 5000}\t{ts(ago(120))}\tv{cid}\tperson\t"
                          f"{'counted' if counted == 't' else 'repeat'}\t{counted}\t{ext}\n")
        if rnd.random() < 0.4:
            mid += 1
            members.append(f"{rnd.choice(groups)}\t{ext}\t2\tmember\t{ts(ago(300))}\t{now}\n")
    raw = engine.raw_connection()
    try:
        copy_lines(raw, "stores", ["code", "name", "address", "city", "status", "updated_at"], lines_s)
        copy_lines(raw, "customers", ["external_userid", "name", "mobiles", "status", "created_at", "updated_at"],
                   customers)
        copy_lines(raw, "follow_relations", ["userid", "external_userid", "state", "tag_ids", "remark_mobiles",
                                             "status", "added_at", "updated_at"], follows)
        copy_lines(raw, "orders", ["source", "order_id", "paid_at", "amount_fen", "refunded_fen", "items",
                                   "external_userid", "created_at"], orders)
        copy_lines(raw, "link_clicks", ["event_id", "code", "clicked_at", "visitor", "agent", "reason", "counted",
                                        "external_userid"], clicks)
        copy_lines(raw, "customer_groups", ["chat_id", "name", "status", "store_code", "tags", "updated_at"],
                   [f"{g}\t群{g}\tactive\t{rnd.choice(stores)}\t[]\t{now}\n" for g in groups])
        copy_lines(raw, "group_members", ["chat_id", "member_id", "member_type", "state", "joined_at", "updated_at"],
                   members)
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        for ix in _secondary_indexes(models):
            ix.create(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    counts.update(customers=n, follow_relations=len(follows), orders=len(orders), link_clicks=len(clicks),
                  group_members=len(members), groups=len(groups), stores=len(stores))
    return counts


def touch_one_percent(engine, n: int, seed: int, at: dt.datetime) -> int:
    """~1% of customers buy again (an order at ``at``), as the order API would insert it."""
    rnd = random.Random(seed + 1)
    picked = sorted(rnd.sample(range(n), max(1, n // 100)))
    with engine.begin() as conn:
        conn.execute(sa.insert(Order.__table__), [
            dict(source="shop", order_id=f"B{i}", paid_at=at, amount_fen=19900, refunded_fen=0, items=[],
                 external_userid=f"wm{i:08d}") for i in picked])
        conn.execute(sa.text("ANALYZE orders"))
    return len(picked)


def _line(what: str, value: float, unit: str, goal: float, *, higher: bool) -> str:
    ok = value >= goal if higher else value <= goal
    sign = ">=" if higher else "<="
    return f"{what:<44} {value:>10,.1f} {unit:<12} goal {sign} {goal:,.0f} {unit}: {'met' if ok else 'MISSED'}"


def _describe(r: PassReport) -> str:
    layers = ", ".join(f"{k}={v}" for k, v in sorted(r.by_layer().items()))
    return f"customers={r.customers:,} changed={r.changed:,} moved={r.moved:,} groups={r.groups_relayered:,} [{layers}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"))
    ap.add_argument("--db-name", default=DB_NAME)
    ap.add_argument("--batch", type=int, default=5000, help="customers per re-layer job (layers.relayer_batch)")
    ap.add_argument("--relayer", type=int, default=50_000, help="customers marked for the re-layer step")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL (PostgreSQL)")
    marker = f"customers={args.customers} seed={args.seed}"
    url, reuse = bench_database(args.database_url, args.db_name, marker, reuse=args.reuse)
    engine = make_engine(url)
    figures: list[str] = []
    if reuse:
        with engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {LayerChange.__tablename__}, {CustomerLayer.__tablename__}"))
            conn.execute(sa.text("UPDATE customer_groups SET layer = NULL"))
            conn.execute(sa.text("DELETE FROM orders WHERE order_id LIKE 'B%'"))
        print(f"data: reused {args.db_name} ({marker})", flush=True)
    else:
        SQLModel.metadata.create_all(engine)
        t0 = time.monotonic()
        counts = load(engine, args.customers, args.seed)
        mark_database(engine, args.db_name, marker)
        print(f"data: {', '.join(f'{k}={v:,}' for k, v in counts.items())} in {time.monotonic() - t0:.0f} s",
              flush=True)

    first = full_pass(engine, RULES, now=NOW)
    print(f"full pass 1: {first.seconds:.1f} s  {_describe(first)}", flush=True)
    figures.append(_line(f"full pass, first ({args.customers:,} customers)", first.seconds, "s", PASS_GOAL_S,
                         higher=False))
    later = NOW + dt.timedelta(days=1)
    bought = touch_one_percent(engine, args.customers, args.seed, later - dt.timedelta(hours=1))
    second = full_pass(engine, RULES, now=later)
    print(f"full pass 2 (+1 day, {bought:,} new orders): {second.seconds:.1f} s  {_describe(second)}", flush=True)
    figures.append(_line("full pass, second (~1% changed)", second.seconds, "s", PASS_GOAL_S, higher=False))

    import redis

    r = redis.Redis.from_url(args.redis_url)
    prefix = f"bench:layers:{uuid.uuid4().hex[:8]}"
    scheduled: list[int] = []
    queue = RelayerQueue(r, scheduled.append, debounce_seconds=5.0, key_prefix=prefix)
    rnd = random.Random(args.seed + 2)
    ids = [f"wm{i:08d}" for i in rnd.sample(range(args.customers), min(args.relayer, args.customers))]
    for i in range(0, len(ids), 1000):
        queue.mark(ids[i:i + 1000])
    done = jobs = 0
    t0 = time.monotonic()
    try:
        while True:
            batch = queue.drain(args.batch)
            if not batch:
                break
            rep = relayer_customers(engine, RULES, batch, now=later)
            done += rep.customers
            jobs += 1
    finally:
        r.delete(f"{prefix}:dirty", f"{prefix}:scheduled")
    seconds = time.monotonic() - t0
    rate = done / seconds if seconds else 0.0
    print(f"re-layer: {done:,} customers in {jobs} jobs of <= {args.batch:,} in {seconds:.1f} s "
          f"({len(scheduled)} drains scheduled)", flush=True)
    figures.append(_line(f"re-layer, batches of {args.batch:,}", rate, "customers/s", RELAYER_GOAL, higher=True))
    print("\nsummary")
    for f in figures:
        print("  " + f)
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

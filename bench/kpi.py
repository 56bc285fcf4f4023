"""Benchmark: the managers' KPIs on PostgreSQL at chain scale.

    python bench/kpi.py [--events 10000000] [--database-url postgresql+psycopg://...] [--runs 30]
                        [--redirect-seconds 10] [--reuse] [--skip-redirect]

Prints each figure against its goal; asserts nothing about speed. Steps:

1. data: a dedicated database (``scrm_bench_kpi`` on the server of ``--database-url`` or
   ``SCRM_TEST_POSTGRES_URL``), tables from the models, a store chain with 60 days of SOP posts,
   tracked links and ``--events`` click and order events (``bench/kpi_data.py``), loaded with
   ``COPY`` (secondary indexes and constraints dropped during the load and rebuilt after it, then
   VACUUM ANALYZE); the last day is held back;
2. rollups: ``rebuild_rollups`` over everything, then the held-back day is loaded (indexes in
   place, link counters and refunds updated as the write-behind and the order API would) and an
   incremental ``refresh_rollups`` is timed;
3. queries: every dashboard query over 7 and 30 days, for all stores and for one store (a clerk),
   ``--runs`` times after a warm-up: p50/p95 against 300 ms;
4. redirect: ``scrm serve`` in its own process on loopback against this database and a private
   Redis; client processes (raw HTTP/1.1, keep-alive) drive ``/t/{code}`` for ``--redirect-seconds``;
   requests/s per server process against 3,000/s; then the click flush runs until the queue is
   empty and ``link_clicks`` must have gained exactly the clicks that got a redirect;
5. a summary table.

``--reuse`` keeps a database loaded by an earlier run with the same ``--events``/``--groups``/
``--seed`` and measures the queries and the redirect only (the rollups are not timed again).

Sizes on a 2-core machine shared with other work (2026-11-30): ``--events 200000`` runs in ~3 min;
1,000,000 in ~25 min (load 2 min, rollup rebuild 12 min); the full 10,000,000 loads in ~13 min
(COPY 7, indexes 6.5), and the rollup rebuild of that is well over an hour (``--rollup-budget``
stops it and extrapolates).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import json
import multiprocessing as mp
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

DB_NAME = "scrm_bench_kpi"  # the default of --db-name
QUERY_GOAL_MS = 300.0
REDIRECT_GOAL = 3000.0
TZ = "Asia/Shanghai"
WINDOW = dt.timedelta(hours=24)


@dataclass
class Figure:
    name: str
    measured: str
    goal: str
    ok: bool | None  # None: no goal (informational)


FIGURES: list[Figure] = []


def say(text: str) -> None:
    print(text, flush=True)


def figure(name: str, measured: str, goal: str = "", ok: bool | None = None) -> None:
    FIGURES.append(Figure(name, measured, goal, ok))


# -- the database ------------------------------------------------------------------------------
def urls(base: str, name: str) -> tuple[str, str, str]:
    """(admin libpq conninfo, bench SQLAlchemy URL, bench libpq conninfo)."""
    from sqlalchemy.engine import make_url

    u = make_url(base)
    if not u.get_backend_name().startswith("postgresql"):
        raise SystemExit("bench/kpi.py needs PostgreSQL: pass --database-url postgresql+psycopg://...")
    bench = u.set(drivername="postgresql+psycopg", database=name)
    admin = u.set(drivername="postgresql").render_as_string(hide_password=False)
    libpq = bench.set(drivername="postgresql").render_as_string(hide_password=False)
    return admin, bench.render_as_string(hide_password=False), libpq


def spec_key(spec) -> str:
    return json.dumps({"events": spec.events, "groups": spec.n_groups, "seed": spec.seed, "days": spec.days,
                       "end": spec.end.isoformat()}, sort_keys=True)


def existing_spec(admin: str, libpq: str, name: str) -> tuple[str, str] | None:
    """(spec, state of the further day: its rows as JSON, or 'applied') of a loaded database."""
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return None
    with psycopg.connect(libpq) as conn:
        try:
            row = conn.execute("SELECT spec, extra FROM bench_kpi_meta").fetchone()
        except psycopg.Error:
            return None
        return (row[0], row[1]) if row else None


def fresh_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_secondary(conn, tables: tuple[str, ...]) -> list[str]:
    """Drop unique/foreign-key constraints and non-primary indexes of ``tables``; the DDL that
    puts them back, in order."""
    cons = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid WHERE t.relname = ANY(%s) AND c.contype IN ('u', 'f')",
        (list(tables),)).fetchall()
    for table, name, _, _kind in sorted(cons, key=lambda r: r[3] != "f"):  # foreign keys first
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    idx = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname = ANY(%s) AND NOT i.indisprimary",
        (list(tables),)).fetchall()
    for name, _ in idx:
        conn.execute(f"DROP INDEX {name}")
    restore = [ddl for _, ddl in idx]
    restore += [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d, k in cons if k == "u"]
    restore += [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d, k in cons if k == "f"]
    return restore


def set_sequences(conn, tables: tuple[str, ...]) -> None:
    for t in tables:
        if not conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = 'id'",
                            (t,)).fetchone():
            continue
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (t,)).fetchone()
        if seq and seq[0]:
            conn.execute(f"SELECT setval('{seq[0]}', GREATEST((SELECT max(id) FROM {t}), 1))")


def load(args, spec, bench_url: str, libpq: str) -> dict[str, int]:
    """Create and fill the database; the rows each rollup stage will have to take."""
    import kpi_data
    import psycopg
    from sqlmodel import SQLModel

    import scrm.models  # noqa: F401  (register every table)
    from scrm.db import make_engine

    engine = make_engine(bench_url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    t0 = time.perf_counter()
    say(f"loading: {spec.events:,} events requested, days {spec.first_day} .. {spec.end} "
        f"(+ the further day {spec.further_day} held back), seed {spec.seed}")
    with psycopg.connect(libpq, autocommit=True) as conn:
        restore = drop_secondary(conn, kpi_data.BIG_TABLES)
    chain = kpi_data.Chain(spec)
    tables = {name: (SQLModel.metadata.tables[name], cols) for name, cols in kpi_data.COLUMNS.items()}
    copier = kpi_data.Copier(libpq, tables)
    stats, extra = kpi_data.generate(chain, copier, lambda s: say("  " + s))
    t_close = time.perf_counter()
    copier.close()
    t_copy = time.perf_counter() - t0
    say(f"  COPY finished (+{time.perf_counter() - t_close:.1f} s to commit): "
        + ", ".join(f"{t} {n:,}" for t, n in stats.rows.items()))
    t1 = time.perf_counter()
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for ddl in restore:
            conn.execute(ddl)
        set_sequences(conn, kpi_data.BIG_TABLES + ("store_codes",))
    t_index = time.perf_counter() - t1
    say(f"  indexes and constraints rebuilt: {len(restore)} in {t_index:.1f} s")
    t2 = time.perf_counter()
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    t_vac = time.perf_counter() - t2
    total = time.perf_counter() - t0
    say(f"  VACUUM ANALYZE {t_vac:.1f} s; main load {total:.1f} s for {stats.events:,} events "
        f"({stats.clicks:,} clicks, {stats.orders:,} orders, {stats.refunds:,} refunds): "
        f"{stats.events / total:,.0f} events/s end to end")
    figure("load: events (main)", f"{stats.events:,}", f"{spec.events:,} requested", None)
    figure("load: COPY (generate + stream)", f"{t_copy:.0f} s", "", None)
    figure("load: index rebuild + VACUUM ANALYZE", f"{t_index + t_vac:.0f} s", "", None)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_kpi_meta (spec text, extra text, loaded_at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO bench_kpi_meta (spec, extra) VALUES (%s, %s)",
                     (spec_key(spec), json.dumps(extra.lines)))
    with psycopg.connect(libpq, autocommit=True) as conn:
        delivered = conn.execute("SELECT count(*) FROM sop_posts WHERE status IN ('sent', 'confirmed')").fetchone()[0]
    return {"link_clicks": stats.clicks, "orders": stats.orders, "order_refunds": stats.refunds,
            "sop_posts": delivered}


def load_further_day(libpq: str) -> dict[str, int]:
    """COPY the held-back day into the indexed tables, then do what the write-behind and the order
    API do beside their inserts: link counters and orders' refunded amounts."""
    import kpi_data
    import psycopg
    from sqlmodel import SQLModel

    with psycopg.connect(libpq, autocommit=True) as conn:
        lines = json.loads(conn.execute("SELECT extra FROM bench_kpi_meta").fetchone()[0])
        before = {t: conn.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()[0]
                  for t in ("link_clicks", "orders", "order_refunds")}
    # The generator numbered these rows with the day they belong to; the database would give them
    # ids after everything already stored (the rollups follow ids), so they are numbered again.
    orders: dict[str, str] = {}
    for name in ("link_clicks", "orders", "order_refunds"):
        renumbered = []
        for k, line in enumerate(lines[name], start=before[name] + 1):
            old, rest = line.split("\t", 1)
            if name == "orders":
                orders[old] = str(k)
            elif name == "order_refunds":
                fields = rest.split("\t")
                fields[1] = orders.get(fields[1], fields[1])  # order_pk of an order of the further day
                rest = "\t".join(fields)
            renumbered.append(f"{k}\t{rest}")
        lines[name] = renumbered
    tables = {name: (SQLModel.metadata.tables[name], kpi_data.COLUMNS[name]) for name in lines}
    copier = kpi_data.Copier(libpq, tables)
    for name, rows in lines.items():
        copier.write(name, rows)
    copier.close()
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(
            "UPDATE tracked_links t SET clicks = t.clicks + a.clicks, unique_clicks = t.unique_clicks + a.uniq, "
            "first_clicked_at = coalesce(t.first_clicked_at, a.first), "
            "last_clicked_at = greatest(t.last_clicked_at, a.last) "
            "FROM (SELECT code, count(*) AS clicks, count(*) FILTER (WHERE counted) AS uniq, min(clicked_at) AS first, "
            "max(clicked_at) AS last FROM link_clicks WHERE id > %s AND agent = 'person' GROUP BY code) a "
            "WHERE t.code = a.code", (before["link_clicks"],))
        conn.execute(
            "UPDATE orders o SET refunded_fen = o.refunded_fen + r.amount FROM (SELECT order_pk, sum(amount_fen) AS "
            "amount FROM order_refunds WHERE id > %s GROUP BY order_pk) r WHERE o.id = r.order_pk",
            (before["order_refunds"],))
        set_sequences(conn, kpi_data.EVENT_TABLES)
        conn.execute("ANALYZE")
    return {name: len(rows) for name, rows in lines.items()}


# -- rollups -----------------------------------------------------------------------------------
def _rebuild_child(bench_url: str, q) -> None:
    """The rebuild in a process of its own, so a run with a time budget can stop it."""
    import dataclasses

    from scrm.db import make_engine
    from scrm.kpi.rollups import rebuild_rollups
    from scrm.logs import configure_logging

    configure_logging("WARNING")
    engine = make_engine(bench_url)
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        q.put(("progress", stage, done, total, time.perf_counter() - t0))

    report = rebuild_rollups(engine, tz=TZ, window=WINDOW, progress=progress)
    q.put(("done", dataclasses.asdict(report), time.perf_counter() - t0))


def rollups(args, engine, bench_url: str, libpq: str, expected: dict[str, int]) -> bool:
    """Time the rebuild (within ``--rollup-budget`` seconds) and an incremental refresh after one
    more day. False when the rollups are not complete (the queries would read partial figures)."""
    try:
        from scrm.kpi.rollups import refresh_rollups
    except ImportError as exc:
        say(f"rollups: not available yet ({exc})")
        figure("rollup rebuild", "not available yet", "", None)
        figure("rollup refresh (+1 day)", "not available yet", "", None)
        return False
    say(f"rollups: rebuild_rollups over everything (budget {args.rollup_budget:,.0f} s) ... {load_note()}")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_rebuild_child, args=(bench_url, q), daemon=True)
    t0 = time.perf_counter()
    child.start()
    stages: dict[str, list[float]] = {}  # stage -> [done, total, seconds at the last report]
    done_msg = None
    last_print = 0.0
    while True:
        left = args.rollup_budget - (time.perf_counter() - t0)
        if left <= 0:
            break
        try:
            msg = q.get(timeout=min(left, 5.0))
        except Exception:  # queue.Empty
            if not child.is_alive():
                break
            continue
        if msg[0] == "done":
            done_msg = msg
            break
        _, stage, done, total, at = msg
        stages[stage] = [done, total, at]
        if at - last_print > 30:
            last_print = at
            say(f"  {at:6.0f} s  {stage}: {done:,}" + (f" / {total:,}" if total else ""))
    if done_msg is None:
        child.terminate()
        child.join(30)
    else:
        child.join(30)
    previous = 0.0
    rates: dict[str, float] = {}
    for stage, (done, _total, at) in stages.items():
        took = at - previous
        rates[stage] = done / max(took, 1e-9)
        say(f"  stage {stage:<14} {done:>11,} rows in {took:7.1f} s ({rates[stage]:,.0f} rows/s)")
        previous = at
    if done_msg is None:
        elapsed = time.perf_counter() - t0
        # What the unfinished stages would take at the rate measured on this run (or the rate of the
        # 100k-event run quoted in the report when a stage never started).
        rest = 0.0
        for stage, total in expected.items():
            done = stages.get(stage, [0])[0]
            rate = rates.get(stage)
            if rate is None or not rate:
                say(f"  stage {stage:<14} not reached ({total:,} rows to do)")
                continue
            rest += max(0, total - done) / rate
        say(f"  rebuild stopped after {elapsed:,.0f} s (budget); at the rates above the rest would take "
            f"~{rest:,.0f} s more (EXTRAPOLATION; stages not reached excluded)")
        figure("rollup rebuild (all data)", f"> {elapsed:,.0f} s (stopped)", "", None)
        figure("rollup rebuild, extrapolated", f"~{elapsed + rest:,.0f} s + stages not reached", "", None)
        return False
    report, rebuild = done_msg[1], done_msg[2]
    say(f"  rebuild: {rebuild:.1f} s ({report['clicks']:,} clicks, {report['orders']:,} orders, "
        f"{report['refunds']:,} refunds, {report['posts_added']:,} posts delivered, "
        f"{report['reattributed']:,} reattributed)")
    figure("rollup rebuild (all data)", f"{rebuild:.1f} s", "", None)
    t1 = time.perf_counter()
    added = load_further_day(libpq)
    say(f"  further day loaded in {time.perf_counter() - t1:.1f} s: "
        + ", ".join(f"{t} {n:,}" for t, n in added.items()))
    t2 = time.perf_counter()
    rep = refresh_rollups(engine, tz=TZ, window=WINDOW)
    refresh = time.perf_counter() - t2
    events = added.get("link_clicks", 0) + added.get("orders", 0) + added.get("order_refunds", 0)
    say(f"  incremental refresh after one more day ({events:,} events, {added.get('sop_posts', 0):,} posts): "
        f"{refresh:.1f} s ({rep.clicks:,} clicks, {rep.orders:,} orders, {rep.refunds:,} refunds, "
        f"{rep.posts_added:,} posts, {rep.reattributed:,} reattributed)")
    figure("rollup refresh (+1 day of events)", f"{refresh:.1f} s", "", None)
    if rep.skipped:
        say(f"  refresh skipped: {rep.skipped}")
    with psycopg_connect(libpq) as conn:
        conn.execute("UPDATE bench_kpi_meta SET extra = 'applied'")
    return True


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"[load average {one:.1f} / {five:.1f} on {os.cpu_count()} cores]"


def psycopg_connect(libpq: str):
    import psycopg

    return psycopg.connect(libpq, autocommit=True)


# -- queries -----------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def query_cases(engine, end: dt.date, store: str) -> tuple[list[tuple[str, Callable[[], object]]], list[str]]:
    """(label, call) for every dashboard query × range × scope; and what is not available yet."""
    from scrm.kpi.report import Dimension, KpiFilter

    tz = ZoneInfo(TZ)
    missing: list[str] = []
    funcs: dict[str, Callable] = {}
    for module, names in (("scrm.kpi.queries", ("kpi_table", "gmv_decomposition", "order_attributions")),
                          ("scrm.kpi.funnel", ("store_funnel",)), ("scrm.kpi.compliance", ("owner_compliance",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            missing += list(names)
            continue
        for n in names:
            if hasattr(mod, n):
                funcs[n] = getattr(mod, n)
            else:
                missing.append(n)

    def call(fn: Callable, *a, **kw) -> Callable[[], object]:
        params = inspect.signature(fn).parameters
        if "tz" in params:
            kw["tz"] = tz
        if "window" in params and "window" not in kw:
            kw["window"] = WINDOW
        return lambda: fn(engine, *a, **kw)

    cases = []
    for days in (7, 30):
        for scope, stores in (("all", None), ("1 store", frozenset({store}))):
            f = KpiFilter(end - dt.timedelta(days=days - 1), end, stores=stores)
            tag = f"{days}d {scope}"
            if "kpi_table" in funcs:
                for dim in Dimension:
                    cases.append((f"kpi_table by {dim.value:<8} {tag}", call(funcs["kpi_table"], f, dim)))
            if "gmv_decomposition" in funcs:
                for by in (Dimension.store, Dimension.group):
                    cases.append((f"gmv_decomposition {by.value:<5} {tag}", call(funcs["gmv_decomposition"], f, by)))
            if "order_attributions" in funcs:
                cases.append((f"order_attributions     {tag}", call(funcs["order_attributions"], f)))
            if "store_funnel" in funcs:
                cases.append((f"store_funnel           {tag}", call(funcs["store_funnel"], f)))
            if "owner_compliance" in funcs:
                cases.append((f"owner_compliance       {tag}", call(funcs["owner_compliance"], f)))
    return cases, missing


def queries(engine, end: dt.date, store: str, runs: int) -> None:
    cases, missing = query_cases(engine, end, store)
    say(f"queries: {load_note()} {len(cases)} cases, {runs} runs each after 2 warm-ups; range ending {end}, "
        f"clerk's store {store}")
    for name in missing:
        say(f"  {name}: not available yet")
        figure(f"query {name}", "not available yet", f"p95 <= {QUERY_GOAL_MS:.0f} ms", None)
    say(f"  {'query':<40} {'rows':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  goal p95 <= {QUERY_GOAL_MS:.0f} ms")
    for label, fn in cases:
        try:
            t_warm = time.perf_counter()
            for _ in range(2):
                out = fn()
            warm_ms = (time.perf_counter() - t_warm) * 500
            # A query already far over its goal gets fewer runs (its p95 is then the slowest of them).
            n = runs if warm_ms <= 5 * QUERY_GOAL_MS else min(runs, 5)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t) * 1000)
        except Exception as exc:  # a query that fails is a finding, not the end of the benchmark
            say(f"  {label:<40} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
            figure(f"query {label}", "FAILED", f"p95 <= {QUERY_GOAL_MS:.0f} ms", False)
            continue
        if isinstance(out, tuple) and out and isinstance(out[0], list):
            out = out[0]  # (rows, total) of the paginated lists
        rows = len(out.rows) if hasattr(out, "rows") else (len(out) if hasattr(out, "__len__") else 1)
        p50, p95 = percentile(times, 50), percentile(times, 95)
        ok = p95 <= QUERY_GOAL_MS
        say(f"  {label:<40} {rows:>6} {p50:>8.1f} {p95:>8.1f} {max(times):>8.1f}  {'ok' if ok else 'OVER'}"
            + (f"  ({n} runs: far over the goal)" if n < runs else ""))
        figure(f"query {label}", f"p95 {p95:.0f} ms (p50 {p50:.0f})", f"p95 <= {QUERY_GOAL_MS:.0f} ms", ok)


# -- the redirect ------------------------------------------------------------------------------
UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{n} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "MicroMessenger/8.0.{n}(0x18002f2c) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 14; V2{n} Build/UP1A; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 "
    "Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160{n} MMWEBSDK/20231202 MicroMessenger/8.0.{n} NetType/4G "
    "Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 13; PJA{n}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 "
    "wxwork/4.1.{n} MicroMessenger/7.0.1 Language/zh",
]


def build_requests(port: int, codes: list[str], tokens: list[str], n: int, seed: int) -> list[bytes]:
    """GET /t/{code}: people in WeChat and WeCom (a third with a customer token), a few preview
    fetchers and bots, over the given codes."""
    import random

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        code = codes[rnd.randrange(len(codes))]
        r = rnd.random()
        extra = ""
        if r < 0.05:
            ua = "Mozilla/5.0 (compatible; WeChatShareExtensionNew) Preview"
            extra = "Purpose: prefetch\r\n"
        elif r < 0.08:
            ua = "python-requests/2.31.0"
        else:
            ua = UAS[rnd.randrange(len(UAS))].format(n=rnd.randrange(40))
        q = f"?c={tokens[rnd.randrange(len(tokens))]}" if tokens and rnd.random() < 0.3 else ""
        out.append(f"GET /t/{code}{q} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {ua}\r\n{extra}\r\n"
                   .encode())
    return out


async def _status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _drive(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = [0]

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.perf_counter() < deadline:
            req = requests[i % len(requests)]
            i += concurrency
            t = time.perf_counter()
            writer.write(req)
            try:
                s = await _status(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                s = -1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            statuses[s] = statuses.get(s, 0) + 1
            counter[0] += 1
            if counter[0] % 16 == 0:
                latencies.append(time.perf_counter() - t)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {"elapsed": time.perf_counter() - t0, "statuses": statuses, "latencies": latencies}


async def _drive_all(port: int, requests: list[bytes], concurrency: int) -> dict:
    """Send each request once (spread over ``concurrency`` connections)."""
    statuses: dict[int, int] = {}

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for req in requests[k::concurrency]:
            writer.write(req)
            s = await _status(reader)
            statuses[s] = statuses.get(s, 0) + 1
        writer.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {"statuses": statuses}


def client_process(port: int, requests: list[bytes], concurrency: int, seconds: float, start_at: float, q) -> None:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    out = runner(_drive(port, requests, concurrency, seconds))
    out["cpu"] = time.process_time() - cpu0
    q.put(out)


async def bare_redirect(scope, receive, send) -> None:
    """The ceiling: answer every request with a 302, no work at all."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 302,
                "headers": [(b"location", b"https://shop.example.com/p/x"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def serve_bare(port: int, kind: str = "bare") -> None:
    """``bare``: the ASGI app above; ``fastapi``: a FastAPI sync endpoint answering a
    RedirectResponse (the framework's own cost, as scrm's /t/ runs: a sync def in the threadpool)."""
    import uvicorn

    app = bare_redirect
    if kind == "fastapi":
        from fastapi import FastAPI
        from fastapi.responses import RedirectResponse

        app = FastAPI()

        @app.get("/t/{code}")
        def tracked(code: str):
            return RedirectResponse("https://shop.example.com/p/x", status_code=302)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def ceiling(args, codes: list[str], kind: str) -> tuple[float, float | None]:
    """Redirects/s and CPU per request of a server doing no work (same uvicorn and client): what the
    machine, the client and the framework allow at all."""
    ctx = mp.get_context("spawn")
    port = free_port()
    proc = ctx.Process(target=serve_bare, args=(port, kind), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        requests = build_requests(port, codes, [], 5000, args.seed)
        cpu0 = process_cpu_seconds(proc.pid)
        out = asyncio.run(_drive(port, requests, args.concurrency, 3.0))
        cpu1 = process_cpu_seconds(proc.pid)
        n = out["statuses"].get(302, 0)
        per = (cpu1 - cpu0) / n if cpu0 is not None and cpu1 is not None and n else None
        return n / out["elapsed"], per
    finally:
        proc.terminate()
        proc.join(10)


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scrm serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("scrm serve did not become ready")


def redirect(args, engine, bench_url: str) -> None:
    try:
        from scrm.clicks.flush import flush_until_empty
        from scrm.clicks.queue import PROCESSING_KEY, QUEUE_KEY
        from scrm.clicks.visitor import make_customer_token
    except ImportError as exc:
        say(f"redirect: not available yet ({exc})")
        figure("redirect /t/ per server process", "not available yet", f">= {REDIRECT_GOAL:,.0f}/s", None)
        return
    import redis as redis_lib
    from sqlalchemy import text

    from scrm.redisserver import RedisServer

    with engine.connect() as conn:
        codes = list(conn.execute(text("SELECT code FROM tracked_links ORDER BY day DESC, code LIMIT :n"),
                                  {"n": args.codes}).scalars())
        customers = list(conn.execute(text("SELECT external_userid FROM customers LIMIT 2000")).scalars())
    if not codes:
        say("redirect: no tracked links in the database")
        return
    secret = secrets.token_hex(32)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    tokens = [make_customer_token(secret, c, expires) for c in customers]
    tmp = Path(tempfile.mkdtemp(prefix="scrm-bench-kpi-"))
    server = None
    redis_server = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis_server = RedisServer(tmp / "redis", persist=False).start()
            redis_url = redis_server.url
        r = redis_lib.Redis.from_url(redis_url)
        if r.llen(QUEUE_KEY) or r.llen(PROCESSING_KEY):
            raise SystemExit(f"the click queue in {redis_url} is not empty: use a Redis of the benchmark's own")
        port = free_port()
        (tmp / "bench.yaml").write_text("{}\n")  # no config.yaml of the checkout: settings from env only
        env = dict(os.environ)
        env.update({
            "SCRM_DATABASE__URL": bench_url, "SCRM_REDIS__URL": redis_url, "SCRM_DATA_DIR": str(tmp / "data"),
            "SCRM_CONFIG": str(tmp / "bench.yaml"), "SCRM_WECOM__CALLBACK_TOKEN": secrets.token_hex(8),
            "SCRM_WECOM__ENCODING_AES_KEY": secrets.token_urlsafe(40)[:43].replace("-", "a").replace("_", "b"),
            "SCRM_CLICKS__SECRET": secret, "SCRM_SOP__TIMEZONE": TZ,
        })
        scrm_bin = Path(sys.executable).parent / "scrm"
        cmd = [str(scrm_bin)] if scrm_bin.exists() else [sys.executable, "-c", "from scrm.cli import main; main()"]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(port)]
        log = open(tmp / "serve.log", "w")  # noqa: SIM115  (closed with the process)
        server = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, server)
        except RuntimeError:
            say((tmp / "serve.log").read_text()[-2000:])
            raise
        say(f"redirect: {load_note()} scrm serve (pid {server.pid}, 1 worker) on 127.0.0.1:{port}, Redis {redis_url}, "
            f"{len(codes):,} link codes, {args.clients} client process(es) x {args.concurrency} connections, "
            f"{args.redirect_seconds:.0f} s")
        with engine.connect() as conn:
            rows_before = conn.execute(text("SELECT count(*) FROM link_clicks")).scalar_one()
        requests = build_requests(port, codes, tokens, 20_000, args.seed)
        # Warm-up: every code once (the link cache holds a URL for a minute; in steady state the hot
        # links are cached) and the connections. These clicks count too.
        warm_requests = [f"GET /t/{c} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {UAS[0].format(n=1)}\r\n\r\n"
                         .encode() for c in codes]
        t_warm = time.perf_counter()
        warm = asyncio.run(_drive_all(port, warm_requests, 16))
        say(f"  warm-up: {len(codes):,} codes once each in {time.perf_counter() - t_warm:.1f} s (link cache filled)")
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        start_at = time.time() + 1.5
        procs = [ctx.Process(target=client_process,
                             args=(port, requests[k::args.clients], args.concurrency, args.redirect_seconds,
                                   start_at, q), daemon=True) for k in range(args.clients)]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = process_cpu_seconds(server.pid)
        results = [q.get(timeout=args.redirect_seconds + 60) for _ in procs]
        cpu1 = process_cpu_seconds(server.pid)
        for p in procs:
            p.join(10)
        elapsed = max(x["elapsed"] for x in results)
        statuses: dict[int, int] = {}
        for x in [warm, *results]:
            for s, n in x["statuses"].items():
                statuses[s] = statuses.get(s, 0) + n
        load_302 = sum(x["statuses"].get(302, 0) for x in results)
        sent_302 = statuses.get(302, 0)
        rate = load_302 / elapsed
        lat = sorted(v for x in results for v in x["latencies"])
        queued = r.llen(QUEUE_KEY)
        say(f"  {load_302:,} redirects in {elapsed:.2f} s: {rate:,.0f}/s by one server process; answers "
            f"{dict(sorted(statuses.items()))} (warm-up included); latency p50 {percentile(lat, 50) * 1000:.1f} ms, "
            f"p99 {percentile(lat, 99) * 1000:.1f} ms")
        if cpu0 is not None and cpu1 is not None and load_302:
            per = (cpu1 - cpu0) / load_302
            say(f"  server CPU {cpu1 - cpu0:.1f} s over {elapsed:.1f} s ({100 * (cpu1 - cpu0) / elapsed:.0f}% of a "
                f"core): {per * 1e6:,.0f} us CPU per redirect, so ~{1 / per:,.0f}/s if it had a whole core to itself")
            figure("redirect: server CPU per request", f"{per * 1e6:,.0f} us (~{1 / per:,.0f}/s a core)",
                   f"<= {1e6 / REDIRECT_GOAL:,.0f} us", per <= 1 / REDIRECT_GOAL)
        for k, x in enumerate(results):
            busy = 100 * x["cpu"] / x["elapsed"]
            say(f"  client {k}: CPU {x['cpu']:.1f} s over {x['elapsed']:.1f} s ({busy:.0f}% of a core)"
                + ("  <- near a full core: the client may be the limit" if busy > 90 else ""))
        figure("redirect /t/ per server process", f"{rate:,.0f}/s", f">= {REDIRECT_GOAL:,.0f}/s", rate >= REDIRECT_GOAL)
        for kind, what in (("bare", "a bare ASGI app answering 302"),
                           ("fastapi", "a FastAPI sync endpoint answering RedirectResponse")):
            bare, bare_per = ceiling(args, codes, kind)
            say(f"  for scale: {what} (no work) does {bare:,.0f}/s with the same client on this machine now "
                f"{load_note()}" + (f", {bare_per * 1e6:,.0f} us CPU per request" if bare_per else ""))
            figure(f"redirect: {kind} ceiling (no work)", f"{bare:,.0f}/s"
                   + (f" ({bare_per * 1e6:,.0f} us CPU)" if bare_per else ""), "", None)
        say(f"  queued in Redis after the run: {queued:,}; flushing ...")
        t0 = time.perf_counter()
        written = 0
        for _ in range(1000):
            rep = flush_until_empty(engine, r, window=WINDOW, batch=5000, max_batches=100_000)
            written += rep.written
            if rep.error:
                say(f"  flush error: {rep.error}")
                break
            if not r.llen(QUEUE_KEY) and not r.llen(PROCESSING_KEY):
                break
            time.sleep(0.2)  # busy: another flusher holds the lock
        flush_s = time.perf_counter() - t0
        with engine.connect() as conn:
            rows_after = conn.execute(text("SELECT count(*) FROM link_clicks")).scalar_one()
        gained = rows_after - rows_before
        say(f"  flush: {written:,} rows written in {flush_s:.1f} s ({written / max(flush_s, 1e-9):,.0f}/s); "
            f"link_clicks gained {gained:,}, redirects answered {sent_302:,}: "
            f"{'equal' if gained == sent_302 else 'MISMATCH'}")
        figure("clicks in link_clicks after flush", f"{gained:,} of {sent_302:,} redirects",
               "all", gained == sent_302)
        figure("click flush rate", f"{written / max(flush_s, 1e-9):,.0f} rows/s", "", None)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if redis_server is not None:
            redis_server.stop()


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"),
                    help="a PostgreSQL server (default $SCRM_TEST_POSTGRES_URL); the benchmark makes its own database "
                         f"{DB_NAME} there")
    ap.add_argument("--db-name", default=DB_NAME, help=f"the benchmark's own database (default {DB_NAME})")
    ap.add_argument("--events", type=int, default=10_000_000, help="click and order events (default 10,000,000)")
    ap.add_argument("--groups", type=int, default=0, help="groups (10,000 at 10M events, scaled with --events)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per query (default 30)")
    ap.add_argument("--reuse", action="store_true", help="keep an already loaded database of the same size")
    ap.add_argument("--skip-rollups", action="store_true", help="load only (and the queries/redirect if asked)")
    ap.add_argument("--rollup-budget", type=float, default=3600.0,
                    help="stop the rollup rebuild after this many seconds and extrapolate (default 3600)")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--skip-redirect", action="store_true")
    ap.add_argument("--redirect-seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=1, help="client processes driving /t/ (default 1)")
    ap.add_argument("--concurrency", type=int, default=64, help="keep-alive connections per client process")
    ap.add_argument("--codes", type=int, default=2000,
                    help="distinct tracked links the redirect load spreads over (the latest ones; default 2000)")
    ap.add_argument("--redis-url", default=None, help="default: a private redis-server the benchmark starts")
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL")

    import kpi_data
    from sqlalchemy import text

    from scrm.db import make_engine
    from scrm.logs import configure_logging

    configure_logging("WARNING")

    tz = ZoneInfo(TZ)
    today = dt.datetime.now(tz).date()
    # The main load ends the day before yesterday; the further day is yesterday (so it lies in
    # the rollups' delivery horizon and is complete).
    spec = kpi_data.ChainSpec(events=args.events, end=today - dt.timedelta(days=2), groups=args.groups,
                              seed=args.seed, tz=TZ)
    admin, bench_url, libpq = urls(args.database_url, args.db_name)
    import psycopg

    with psycopg.connect(admin) as conn:
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in
                    ("server_version", "shared_buffers", "work_mem", "max_parallel_workers_per_gather")}
    say(f"scrm KPI benchmark: {os.cpu_count()} cores, PostgreSQL {settings['server_version']} "
        f"(shared_buffers {settings['shared_buffers']}, work_mem {settings['work_mem']}, parallel workers per gather "
        f"{settings['max_parallel_workers_per_gather']}), database {args.db_name}")
    say(f"chain: {spec.n_stores:,} stores, {spec.n_groups:,} groups, {spec.n_bots} bots; {spec.days} days "
        f"{spec.first_day} .. {spec.end} + the further day {spec.further_day}")
    existing = existing_spec(admin, libpq, args.db_name) if args.reuse else None
    reused = existing is not None and existing[0] == spec_key(spec)
    engine = None
    try:
        complete = False
        if reused:
            assert existing is not None
            complete = existing[1] == "applied"
            say("reusing the loaded database" + (" (rollups complete: not timed again)" if complete else ""))
            expected = None
        else:
            fresh_database(admin, args.db_name)
            expected = load(args, spec, bench_url, libpq)
        engine = make_engine(bench_url)
        if not complete and not args.skip_rollups:
            if expected is None:
                with engine.connect() as conn:
                    expected = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                                for t in ("link_clicks", "orders", "order_refunds")}
                    expected["sop_posts"] = conn.execute(text(
                        "SELECT count(*) FROM sop_posts WHERE status IN ('sent', 'confirmed')")).scalar_one()
            complete = rollups(args, engine, bench_url, libpq, expected)
        if not args.skip_queries:
            if complete:
                queries(engine, spec.further_day, kpi_data.store_code(0), args.runs)
            else:
                say("queries: skipped, the rollups are not complete (their figures would be partial)")
        if not args.skip_redirect:
            redirect(args, engine, bench_url)
    finally:
        if engine is not None:
            engine.dispose()
    say("")
    say(f"summary ({spec.events:,} events requested, {spec.n_groups:,} groups)")
    say(f"  {'figure':<46} {'measured':>28} {'goal':>18}  result")
    for f in FIGURES:
        verdict = "" if f.ok is None else ("ok" if f.ok else "OVER")
        say(f"  {f.name:<46} {f.measured:>28} {f.goal:>18}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: planning one day of SOP posts for N groups and 20 templates, and (``--write``)
writing that day's plan into the PostgreSQL ledger.

    python bench/sop_plan.py [--groups 10000,30000,100000] [--templates 20]
    python bench/sop_plan.py --write [--write-only] [--write-groups 100000]
                             [--database-url postgresql+psycopg://...] [--db-name scrm_bench_sop_plan]
                             [--reuse] [--code DIR]

Each size runs in a fresh process so its peak memory (max RSS) is its own. The data is a
realistic mix: 600 bots, 5,000 stores in 12 cities, group tags and layers; templates target all
groups, cities, stores, tags or layers, on weekdays, weekends or every day, with one to three
steps across mass_send and owner_task. For 100,000 groups the plan is 300,000 posts (3 a group).
Prints figures; asserts nothing about speed.

``--write`` adds the ledger part (``--write-only``: only it). A dedicated database (default
scrm_bench_sop_plan on SCRM_TEST_POSTGRES_URL's server) is migrated as the app does
(``scrm.db.migrate``), and the same world is bulk-loaded with COPY (stores with their cities,
``--write-groups`` active groups plus 2% dismissed ones; at most 167 groups a bot). Then
``scrm.sop.service.replan_day``, the function the scheduler calls, runs three times, each in a
fresh child process (its peak RSS is its own), at 04:00 local on the planned day (every post still
in the future, so every planned row is replaceable):

  (a) first plan of the day into an empty ledger (goal <= 30 s);
  (b) replan after a template edit: one template's text and another's time changed (goal <= 10 s);
  (c) replan with nothing changed.

The seconds are split by timing the functions replan_day calls (load_groups, read_day,
GroupIndex + plan_day, fit_to_ledger); "write" is the rest: the advisory lock, deletes, inserts
and the commit. After each step the parent checks the limits in SQL (posts and mass sends per group,
groups per bot, one row per step) and prints a digest of the ledger's contents (every column a
plan decides, not the ids), so two runs on the same data, or two checkouts (``--code`` imports
``scrm`` from another checkout, e.g. ``git archive <commit> scrm | tar -x -C DIR``), show whether
they wrote the same ledger. ``--reuse`` keeps the loaded groups of an earlier run of the same size
and empties only the ledger.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DAY = dt.date(2026, 11, 24)  # a Tuesday
GOAL_SECONDS = 5.0
GOAL_BYTES = 1 << 30
CITIES = ["上海", "北京", "深圳", "广州", "杭州", "南京", "成都", "武汉", "西安", "苏州", "天津", "重庆"]


def make_templates(n: int):
    from scrm.sop.template import SopTemplate

    targets = [{}, {"cities": ["上海", "北京"]}, {"group_tags": ["office"]}, {"layers": ["vip", "active"]},
               {"stores": [f"S{i:05d}" for i in range(0, 5000, 7)]}, {"exclude_stores": ["S00001"]}]
    days = [{}, {"weekdays": ["mon", "tue", "wed", "thu", "fri"]}, {"weekdays": ["sat", "sun"]},
            {"from": "2026-11-01", "until": "2026-12-31"}]
    out = []
    for i in range(n):
        steps = [{"at": f"{8 + (i * 3 + k * 5) % 13:02d}:{(i * 7) % 60:02d}",
                  "channel": "mass_send" if (i + k) % 3 == 0 else "owner_task",
                  "text": "{{ store.name }} 今日福利"} for k in range(1 + i % 3)]
        # Steps of one template must differ in time.
        seen, unique = set(), []
        for s in steps:
            if s["at"] not in seen:
                seen.add(s["at"])
                unique.append(s)
        out.append(SopTemplate.model_validate({
            "id": f"tpl{i:02d}", "name": f"模板{i}", "priority": (i * 37) % 101,
            "targets": targets[i % len(targets)], "days": days[i % len(days)], "steps": unique,
        }))
    return out


def make_groups(n: int):
    from scrm.sop.planner import GroupInfo

    layers = ["vip", "active", "dormant", None]
    return [
        GroupInfo(
            chat_id=f"wr{i:08d}", owner=f"bot{i % 600:03d}", store_code=f"S{i % 5000:05d}",
            city=CITIES[(i % 5000) % len(CITIES)], tags=frozenset({"office"} if i % 4 == 0 else ()),
            layer=layers[i % 4],
        )
        for i in range(n)
    ]


def run_one(groups_n: int, templates_n: int) -> dict:
    from scrm.sop.planner import GroupIndex, Limits, plan_day

    templates = make_templates(templates_n)
    groups = make_groups(groups_n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    index = GroupIndex(groups)
    plan = plan_day(DAY, templates, index, Limits())
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_group: dict[str, int] = {}
    for p in plan.posts:
        per_group[p.chat_id] = per_group.get(p.chat_id, 0) + 1
    return {
        "groups": groups_n, "templates": templates_n, "seconds": elapsed, "peak_rss": peak,
        "rss_before": rss_before, "posts": len(plan.posts), "dropped": sum(plan.dropped_counts.values()),
        "max_per_group": max(per_group.values(), default=0),
        "max_groups_per_bot": max(plan.groups_per_bot.values(), default=0),
    }


# --- the ledger part (--write) -----------------------------------------------------------------

EARLY = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.UTC)  # 04:00 local (Asia/Shanghai) on DAY
TZ_NAME = "Asia/Shanghai"
STORES = 5000
WRITE_STEPS = (  # (key, label, templates edited?, goal in seconds)
    ("a", "first plan, empty ledger", False, 30.0),
    ("b", "replan after a template edit", True, 10.0),
    ("c", "replan, nothing changed", True, None),
)
EDITED_TEXT, EDITED_TIME = "tpl19", "tpl05"


def edited_templates(n: int):
    """The same templates after an operator's edit: one template's text changed, another's step
    moved by 30 minutes (its posts move, and with them what the spacing lets through)."""
    from scrm.sop.template import SopTemplate

    out = []
    for t in make_templates(n):
        data = t.model_dump(mode="json", by_alias=True, exclude_none=True)
        if t.id == EDITED_TEXT:
            data["steps"][0]["text"] = "{{ store.name }} 今日福利（周二加量）"
        elif t.id == EDITED_TIME:
            h, m = map(int, data["steps"][0]["at"].split(":"))
            data["steps"][0]["at"] = f"{h + (m + 30) // 60:02d}:{(m + 30) % 60:02d}"
        out.append(SopTemplate.model_validate(data))
    return out


def load_world(engine, n: int) -> None:
    """Stores and groups as make_groups describes them (plus 2% dismissed groups), by COPY."""
    from bench.pg_data import copy_lines, ts

    stamp = ts(EARLY)
    stores = [f"S{j:05d}\t门店{j}\t{CITIES[j % len(CITIES)]}中山路{j}号\t{CITIES[j % len(CITIES)]}\topen\t{stamp}\n"
              for j in range(STORES)]
    layers = ["vip", "active", "dormant", "\\N"]
    tags = ['["office"]', "[]", "[]", "[]"]
    groups = [f"wr{i:08d}\t群{i}\tbot{i % 600:03d}\tactive\tS{i % STORES:05d}\t{tags[i % 4]}\t{layers[i % 4]}"
              f"\t{stamp}\n" for i in range(n)]
    groups += [f"wd{i:08d}\t旧群{i}\tbot{i % 600:03d}\tdismissed\tS{i % STORES:05d}\t[]\t\\N\t{stamp}\n"
               for i in range(n // 50)]
    raw = engine.raw_connection()
    try:
        copy_lines(raw, "stores", ["code", "name", "address", "city", "status", "updated_at"], stores)
        copy_lines(raw, "customer_groups", ["chat_id", "name", "owner_userid", "status", "store_code", "tags",
                                            "layer", "updated_at"], groups)
        raw.commit()
    finally:
        raw.close()


def run_write(step: str, url: str, templates_n: int) -> dict:
    """One replan_day in this (fresh) process, its seconds split by the functions it calls."""
    from collections import defaultdict
    from zoneinfo import ZoneInfo

    import scrm.models  # noqa: F401
    from scrm.db import make_engine
    from scrm.sop import service
    from scrm.sop.planner import Limits

    edited = dict((k, e) for k, _, e, _ in WRITE_STEPS)[step]
    templates = edited_templates(templates_n) if edited else make_templates(templates_n)
    engine = make_engine(url)
    with engine.connect() as conn:  # connect before timing: the pool's first connection is not the write
        conn.exec_driver_sql("SELECT 1")
    seconds: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - t0
        return wrapper

    service.load_groups = timed("load groups", service.load_groups)
    service.read_day = timed("read ledger", service.read_day)
    service.GroupIndex = timed("plan", service.GroupIndex)
    service.plan_day = timed("plan", service.plan_day)
    service.fit_to_ledger = timed("fit", service.fit_to_ledger)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    r = service.replan_day(engine, templates, DAY, Limits(), tz=ZoneInfo(TZ_NAME), now=EARLY)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    engine.dispose()
    split = {k: seconds[k] for k in ("load groups", "read ledger", "plan", "fit")}
    split["write"] = total - sum(split.values())
    return {"step": step, "seconds": total, "cpu": cpu, "split": split, "kept": r.kept, "inserted": r.inserted,
            "removed": r.removed, "conflicts": r.conflicts, "posts": len(r.plan.posts),
            "dropped": sum(r.dropped.values()), "peak_rss": peak, "rss_before": rss_before}


LEDGER_CHECKS = {
    "max posts a group": "SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM sop_posts WHERE day = :d "
                         "GROUP BY chat_id) x",
    "max mass sends a group": "SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM sop_posts WHERE day = :d "
                              "AND channel = 'mass_send' GROUP BY chat_id) x",
    "max groups a bot": "SELECT coalesce(max(n), 0) FROM (SELECT count(DISTINCT chat_id) n FROM sop_posts "
                        "WHERE day = :d GROUP BY sender) x",
    "max rows a step": "SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM sop_posts WHERE day = :d "
                       "GROUP BY chat_id, template_id, step_key) x",
}
LEDGER_LIMITS = {"max posts a group": 3, "max mass sends a group": 1, "max groups a bot": 200, "max rows a step": 1}
# Every column a plan decides (not ids or write times): two runs wrote the same ledger iff equal.
LEDGER_DIGEST = (
    "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', chat_id, slot, mass_seq, template_id, step_key, "
    "template_digest, channel, sender, priority, status, attempts, "
    "to_char(scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), "
    "to_char(window_ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')), "
    "E'\n' ORDER BY chat_id, slot), '')) FROM sop_posts WHERE day = :d"
)


def check_ledger(engine) -> tuple[dict[str, int], int, str]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        checks = {name: conn.execute(sa.text(q), {"d": DAY}).scalar() for name, q in LEDGER_CHECKS.items()}
        rows, digest = conn.execute(sa.text(LEDGER_DIGEST), {"d": DAY}).one()
    return checks, rows, digest


def main_write(args) -> None:
    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    import scrm
    import scrm.models  # noqa: F401
    from bench.pg_data import bench_database, mark_database
    from scrm.db import alembic_config, make_engine, migrate

    head = ScriptDirectory.from_config(alembic_config(args.database_url)).get_current_head()
    marker = f"sop_plan groups={args.write_groups} stores={STORES} schema={head}"
    url, reused = bench_database(args.database_url, args.db_name, marker, reuse=args.reuse)
    print(f"\nscrm SOP ledger write benchmark: {args.write_groups:,} active groups, {args.templates} templates, "
          f"day {DAY}, PostgreSQL, {os.cpu_count()} cores", flush=True)
    print(f"code: {Path(scrm.__file__).parent.parent}", flush=True)
    engine = make_engine(url)
    if reused:
        print(f"data: reused {args.db_name} ({marker})", flush=True)
    else:
        t0 = time.perf_counter()
        migrate(url)
        load_world(engine, args.write_groups)
        mark_database(engine, args.db_name, marker)
        print(f"data: migrated and loaded {args.db_name} in {time.perf_counter() - t0:.1f} s ({marker})", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("TRUNCATE sop_posts RESTART IDENTITY"))
        conn.execute(sa.text("VACUUM ANALYZE"))
    results = []
    for key, label, _, goal in WRITE_STEPS:
        load = os.getloadavg()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.code), str(ROOT)]))
        out = subprocess.run([sys.executable, __file__, "--child-write", key, "--url", url,
                              "--templates", str(args.templates), "--code", str(args.code)],
                             check=True, capture_output=True, text=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        checks, rows, digest = check_ledger(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE sop_posts"))  # as autovacuum would after the write
        results.append(r)
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items())
        verdict = "" if goal is None else f"  goal <= {goal:.0f} s: {'MET' if r['seconds'] <= goal else 'NOT MET'}"
        print(f"({key}) {label}: {r['seconds']:.2f} s{verdict}", flush=True)
        print(f"    rows kept {r['kept']:,} inserted {r['inserted']:,} removed {r['removed']:,} "
              f"conflicts {r['conflicts']:,}; plan {r['posts']:,} posts, {r['dropped']:,} dropped", flush=True)
        print(f"    seconds: {split}; this process's CPU {r['cpu']:.2f} s (the rest: PostgreSQL, waiting)",
              flush=True)
        print(f"    peak RSS {r['peak_rss'] / 2**20:.0f} MB (before replan_day {r['rss_before'] / 2**20:.0f} MB); "
              f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        held = all(checks[k] <= LEDGER_LIMITS[k] for k in checks)
        print(f"    ledger {rows:,} rows, digest {digest}; limits in SQL: "
              + ", ".join(f"{k} {v} (<= {LEDGER_LIMITS[k]})" for k, v in checks.items())
              + f": {'HELD' if held else 'BROKEN'}", flush=True)
    a, b, c = results
    print(f"same-run ratios: (b)/(a) time {b['seconds'] / a['seconds']:.2f}, (c)/(a) time "
          f"{c['seconds'] / a['seconds']:.2f}; (a) inserts/s {a['inserted'] / a['seconds']:,.0f}; "
          f"write share of (a) {a['split']['write'] / a['seconds']:.0%}", flush=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="10000,30000,100000", help="comma-separated group counts")
    ap.add_argument("--templates", type=int, default=20)
    ap.add_argument("--write", action="store_true", help="also write the day's plan into a PostgreSQL ledger")
    ap.add_argument("--write-only", action="store_true", help="only the ledger part")
    ap.add_argument("--write-groups", type=int, default=100_000)
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"))
    ap.add_argument("--db-name", default="scrm_bench_sop_plan")
    ap.add_argument("--reuse", action="store_true", help="keep the groups of an earlier run of the same size")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose scrm package is measured")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-write", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.code = args.code.resolve()
    sys.path.insert(0, str(args.code))
    if args.child:
        print(json.dumps(run_one(args.child, args.templates)))
        return 0
    if args.child_write:
        print(json.dumps(run_write(args.child_write, args.url, args.templates)))
        return 0
    if (args.write or args.write_only) and not args.database_url:
        ap.error("--write needs --database-url or SCRM_TEST_POSTGRES_URL (PostgreSQL)")
    if not args.write_only:
        main_plan(args)
    if args.write or args.write_only:
        main_write(args)
    return 0


def main_plan(args) -> None:
    sizes = [int(x) for x in args.groups.split(",")]
    print(f"scrm SOP planner benchmark: one day ({DAY}, a Tuesday), {args.templates} templates, "
          f"{os.cpu_count()} cores")
    print(f"  {'groups':>8} {'seconds':>8} {'peak RSS':>9} {'posts':>8} {'dropped':>9} {'max/grp':>7} "
          f"{'max grp/bot':>11}")
    results = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--templates", str(args.templates),
                              "--code", str(args.code)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"  {r['groups']:>8,} {r['seconds']:>8.2f} {r['peak_rss'] / 2**20:>7.0f}MB {r['posts']:>8,} "
              f"{r['dropped']:>9,} {r['max_per_group']:>7} {r['max_groups_per_bot']:>11}")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"  growth {a['groups']:,} -> {b['groups']:,} groups ({b['groups'] / a['groups']:.0f}x): "
              f"time x{b['seconds'] / a['seconds']:.1f}, peak RSS x{b['peak_rss'] / a['peak_rss']:.1f}")
    big = results[-1]
    print(f"  goal: {big['groups']:,} groups in <= {GOAL_SECONDS:.0f} s: "
          f"{'MET' if big['seconds'] <= GOAL_SECONDS else 'NOT MET'} ({big['seconds']:.2f} s)")
    print(f"  goal: peak memory <= 1 GB: {'MET' if big['peak_rss'] <= GOAL_BYTES else 'NOT MET'} "
          f"({big['peak_rss'] / 2**20:.0f} MB peak RSS of the whole process, data included)")


if __name__ == "__main__":
    sys.exit(main())

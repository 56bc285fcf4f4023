"""Benchmark: firing mass sends, as production runs it, against the sandbox as its own process.

    python bench/sop_fire.py [--posts 100000] [--slot-groups 30000] [--latency-ms 30]
                             [--threads 4] [--fire-interval 30] [--max-minutes 15] [--reuse]

What runs: a dedicated PostgreSQL database (migrated as ``scrm migrate`` does) holds 5,000 stores
and the groups (20 a store; a store's groups belong to one of 600 owners, so an owner has 160-180
groups, never over 200). The sandbox runs as its own server process (``bench/sandbox_proc.py``:
30 ms a call, WeCom's 10,000 calls a minute per API enforced with 45009) and knows the same owners
and groups. Each scenario puts one 08:00 mass-send post per group into ``sop_posts`` (COPY,
status planned), all already due, in the order the planner spreads them (a bot's groups spaced
evenly over sop.spread_minutes = 20, so one scheduled_for order interleaves the owners), then runs
what the scheduler and the workers run: ``scrm.sop.jobs.fire`` every ``--fire-interval`` seconds
(claim, expire, queue chunks) and ``SopSender.send`` on each queued chunk in ``--threads``
in-process threads (a worker process's threads: pipeline.worker_threads = 4; one WeComClient shared
like a worker's), until no post is planned or sending.

Content mix (by store, so a store's groups get the same template): 50 % a plain text (the same for
everyone: one call per owner can carry all their groups), 40 % a text with ``{{ store.name }}``
(one content per store: one call per owner and store, about 20 chats), 10 % a text with a link
attachment (tracked per group: one call per group).

Scenarios: ``100k``: --posts posts; ``08:00 slot``: --slot-groups groups' 08:00 posts, all due at
once (the worst case: the planner's spread lets them fall due over 20 minutes, which asks less of
each tick). The goal: the slot's posts handed to WeCom (add_msg_template created) within
sop.spread_minutes, with at most 10,000 add_msg_template calls in any minute.

Prints figures; asserts nothing about speed. It does check that no group got two tasks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import zlib
from collections import Counter
from inspect import signature
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OWNERS = 600
STORES = 5000
SPREAD_SECONDS = 20 * 60
LIMIT_PER_MINUTE = 10_000
ADD = "externalcontact/add_msg_template"

TEMPLATES = {
    "morning": """\
        id: morning
        name: 早安问候
        steps:
          - {id: hello, at: "08:00", channel: mass_send, text: "早上好☀️ 今天全场咖啡第二杯半价，来店里坐坐吧～"}
    """,
    "store-news": """\
        id: store-news
        name: 门店早报
        targets: {with_store: true}
        steps:
          - id: news
            at: "08:00"
            channel: mass_send
            text: "{{ store.name }}早安！今日到店福利：满 30 减 5，限今天。"
    """,
    "coupon": """\
        id: coupon
        name: 早餐券
        steps:
          - id: coupon
            at: "08:00"
            channel: mass_send
            text: "早餐券到啦，点开领取👇"
            attachments:
              - link: {title: 早餐券, url: "https://m.example.com/coupon/breakfast"}
    """,
}


def chat_id(i: int) -> str:
    return f"wrbench{i:08d}"


def store_of(i: int) -> int:
    return i % STORES


def owner_of_store(s: int) -> str:
    return f"bot{s % OWNERS:03d}"


def template_of_store(s: int) -> str:
    k = s % 10
    return "morning" if k < 5 else "store-news" if k < 9 else "coupon"


# -- the sandbox process's setup (runs in the child) --------------------------------------------
def seed_sandbox(sandbox, arg) -> None:
    """The owners and groups, and a view of what the bench counts: add_msg_template calls (time of
    each, how many refused with 45009) and the chats of every task created."""
    from scrm.sandbox.state import SandboxError

    for o in range(OWNERS):
        sandbox.add_member(f"bot{o:03d}", f"店长{o}")
    for i in range(int(arg["groups"])):
        sandbox.create_group(owner_of_store(store_of(i)), f"福利群{i}", chat_id=chat_id(i))
    stats: dict = {"times": [], "refused": 0, "lookups": 0}
    check_rate = sandbox._check_rate

    def counting_check_rate(path: str) -> None:
        if path == "externalcontact/get_groupmsg_list_v2":
            stats["lookups"] += 1
        if path != ADD:
            return check_rate(path)
        stats["times"].append(time.time())
        try:
            check_rate(path)
        except SandboxError as exc:
            if exc.errcode == 45009:
                stats["refused"] += 1
            raise

    def bench_snapshot() -> dict:
        with sandbox.lock:
            return {"times": list(stats["times"]), "refused": stats["refused"], "lookups": stats["lookups"],
                    "tasks": [[t.creator, [r["chat_id"] for rs in t.results.values() for r in rs]]
                              for t in sandbox.templates.values()]}

    sandbox._check_rate = counting_check_rate
    sandbox.snapshot = bench_snapshot


# -- data ---------------------------------------------------------------------------------------
def load_corp(engine, groups: int) -> None:
    from bench.pg_data import copy_lines, ts
    from scrm.db import utcnow

    now = ts(utcnow())
    raw = engine.raw_connection()
    try:
        copy_lines(raw.driver_connection, "stores", ["code", "name", "address", "city", "status", "updated_at"],
                   [f"S{s:05d}\t第{s}号店\t\t上海\topen\t{now}\n" for s in range(STORES)])
        copy_lines(raw.driver_connection, "customer_groups",
                   ["chat_id", "name", "owner_userid", "status", "store_code", "tags", "updated_at"],
                   [f"{chat_id(i)}\t福利群{i}\t{owner_of_store(store_of(i))}\tactive\tS{store_of(i):05d}\t[]\t{now}\n"
                    for i in range(groups)])
        raw.commit()
    finally:
        raw.close()


def load_posts(engine, n: int, *, start: dt.datetime, tz) -> None:
    """One planned 08:00 mass send per group 0..n-1, all due: scheduled_for is the slot's start
    (``start`` - 20 min) plus the planner's offset (a bot's groups spaced evenly over 20 min)."""
    import sqlalchemy as sa

    from bench.pg_data import copy_lines, ts

    by_owner: dict[str, list[int]] = {}
    for i in range(n):
        by_owner.setdefault(owner_of_store(store_of(i)), []).append(i)
    slot = start - dt.timedelta(seconds=SPREAD_SECONDS)
    day = start.astimezone(tz).date()
    window_end = ts(start + dt.timedelta(hours=3))
    stamp = ts(start)
    lines = []
    for owner, members in by_owner.items():
        members.sort(key=chat_id)
        for rank, i in enumerate(members):
            at = ts(slot + dt.timedelta(seconds=rank * SPREAD_SECONDS // len(members)))
            tpl = template_of_store(store_of(i))
            digest = f"{zlib.crc32(tpl.encode()):08x}"
            lines.append(f"{day}\tgroup\t{chat_id(i)}\t1\t1\t{tpl}\t{TEMPLATE_STEPS[tpl]}\t{digest}\tmass_send\t"
                         f"{owner}\t50\t{at}\t{window_end}\tplanned\t0\t{stamp}\t{stamp}\n")
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE sop_posts, tracked_links RESTART IDENTITY"))
    raw = engine.raw_connection()
    try:
        copy_lines(raw.driver_connection, "sop_posts",
                   ["day", "audience", "chat_id", "slot", "mass_seq", "template_id", "step_key", "template_digest",
                    "channel", "sender", "priority", "scheduled_for", "window_ends_at", "status", "attempts",
                    "created_at", "updated_at"], lines)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE sop_posts"))


TEMPLATE_STEPS = {"morning": "hello", "store-news": "news", "coupon": "coupon"}


# -- one scenario -------------------------------------------------------------------------------
def run_scenario(label: str, engine, n: int, args, folder: Path, lines: list[str]) -> None:
    import sqlalchemy as sa

    from bench.sandbox_proc import sandbox_process
    from scrm.config import SopSettings
    from scrm.db import utcnow
    from scrm.sop import jobs
    from scrm.sop.jobs import fire, load_templates
    from scrm.sop.sender import SopSender
    from scrm.wecom.client import WeComClient

    sop = SopSettings(templates_dir=folder)
    tz = __import__("zoneinfo").ZoneInfo(sop.timezone)
    print(f"\n== {label}: {n:,} posts; sandbox latency {args.latency_ms} ms, {LIMIT_PER_MINUTE:,}/min per API",
          flush=True)
    t0 = time.monotonic()
    with sandbox_process(latency_ms=args.latency_ms, rate_limit_per_minute=LIMIT_PER_MINUTE,
                         setup="bench.sop_fire:seed_sandbox", setup_arg={"groups": n}) as sb:
        print(f"sandbox up with {n:,} groups in {time.monotonic() - t0:.1f} s", flush=True)
        start = utcnow()
        load_posts(engine, n, start=start, tz=tz)
        client = WeComClient(sb.corp_id, sb.secret, sb.api_base_url, timeout=5.0, backoff=(1.0, 2.0, 4.0))
        # As scrm.runtime.build_sop_sender and scheduling.sop_fire_job build them (on code that has
        # the options: sop.send_concurrency, the claim per tick).
        extra = {"concurrency": sop.send_concurrency} if "concurrency" in signature(SopSender).parameters else {}
        sender = SopSender(engine, client, lambda: load_templates(folder, sop), tz=tz,
                           link_base="http://scrm.bench", **extra)
        fire_kw = {"claim": jobs.claim_limit(sop)} if hasattr(jobs, "claim_limit") else {}
        jobs_q: queue.Queue = queue.Queue()
        errors: Counter = Counter()
        outcome: Counter = Counter()
        busy = [0]
        lock = threading.Lock()

        def worker() -> None:
            while True:
                ids = jobs_q.get()
                if ids is None:
                    return
                with lock:
                    busy[0] += 1
                try:
                    for k, v in sender.send(ids).items():
                        with lock:
                            outcome[k] += v
                except Exception as exc:  # a worker would retry the job (dramatiq); count it
                    with lock:
                        errors[type(exc).__name__] += 1
                finally:
                    with lock:
                        busy[0] -= 1
                    jobs_q.task_done()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
        for t in threads:
            t.start()
        queued = [0]

        def enqueue(ids: list[int]) -> None:
            queued[0] += 1
            jobs_q.put(list(ids))

        started = time.monotonic()
        deadline = started + args.max_minutes * 60
        next_tick = started
        ticks = 0
        claim_times: list[float] = []
        last_report = started
        finished = False
        while time.monotonic() < deadline:
            now_m = time.monotonic()
            if now_m >= next_tick:
                f0 = time.monotonic()
                counts = fire(engine, enqueue, now=utcnow(), **fire_kw)
                claim_times.append(time.monotonic() - f0)
                ticks += 1
                next_tick = max(next_tick + args.fire_interval, time.monotonic())
                if counts.get("expired"):
                    outcome["expired"] += counts["expired"]
            with engine.connect() as conn:
                open_posts, sent = conn.execute(sa.text(
                    "SELECT count(*) FILTER (WHERE status IN ('planned', 'sending', 'due')), "
                    "count(*) FILTER (WHERE status = 'sent') FROM sop_posts")).one()
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                print(f"  {time.monotonic() - started:6.0f} s: sent {sent:,}, open {open_posts:,}, "
                      f"jobs queued {queued[0]:,} (waiting {jobs_q.qsize():,})", flush=True)
            if open_posts == 0 and jobs_q.qsize() == 0 and busy[0] == 0:
                finished = True
                break
            time.sleep(0.2)
        wall = time.monotonic() - started
        try:  # not finished: drop the jobs not started, let the running ones end before counting
            while True:
                jobs_q.get_nowait()
        except queue.Empty:
            pass
        for _ in threads:
            jobs_q.put(None)
        for t in threads:
            t.join(120)
        with urllib.request.urlopen(sb.base_url + "/sandbox/state", timeout=120) as resp:
            stats = json.loads(resp.read())
        client.close()

    with engine.connect() as conn:
        by_status = dict(conn.execute(sa.text("SELECT status, count(*) FROM sop_posts GROUP BY status")).all())
        first_sent, last_sent = conn.execute(sa.text(
            "SELECT min(sent_at), max(sent_at) FROM sop_posts WHERE status = 'sent'")).one()
        ledger_sent = {r.chat_id: r.msgid for r in conn.execute(sa.text(
            "SELECT chat_id, msgid FROM sop_posts WHERE status = 'sent'"))}
    sent = by_status.get("sent", 0)
    tasks = stats["tasks"]
    per_chat = Counter(c for _, chats in tasks for c in chats)
    twice = sum(1 for v in per_chat.values() if v > 1)
    in_wecom_not_ledger = sum(1 for c in per_chat if c not in ledger_sent)
    sent_without_task = sum(1 for c in ledger_sent if c not in per_chat)
    times = sorted(stats["times"])
    per_fixed_minute = Counter(int(t // 60) for t in times)
    rolling, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 60:
            j += 1
        rolling = max(rolling, i - j + 1)
    handed = (last_sent - start).total_seconds() if last_sent else float("nan")
    calls_ok = len(tasks)
    chats = sum(len(c) for _, c in tasks)
    load = os.getloadavg()
    summary = (
        f"{label}: {n:,} posts, {'all sent' if finished else 'NOT FINISHED'} in {wall:.1f} s wall "
        f"(last handed to WeCom {handed:.1f} s after they fell due); "
        f"{sent / handed if handed == handed and handed > 0 else 0:,.0f} posts/s; "
        f"ledger {dict(sorted(by_status.items()))}; "
        f"add_msg_template calls {len(times):,} ({calls_ok:,} tasks created, {chats / max(1, calls_ok):.1f} chats "
        f"per task, refused 45009: {stats['refused']:,}); max calls in a clock minute "
        f"{max(per_fixed_minute.values(), default=0):,}, in any rolling 60 s {rolling:,} (limit {LIMIT_PER_MINUTE:,}); "
        f"timeout lookups {stats['lookups']:,}; fire ticks {ticks} every {args.fire_interval:g} s claiming up to "
        f"{fire_kw.get('claim', 2000):,} "
        f"(fire() {max(claim_times, default=0):.2f} s max); worker errors {dict(errors) or 0}; "
        f"groups with two tasks {twice}; tasks not in the ledger {in_wecom_not_ledger}; "
        f"sent in the ledger without a task {sent_without_task}; "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(summary, flush=True)
    lines.append(summary)
    return handed if finished else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument("--slot-groups", type=int, default=30_000)
    ap.add_argument("--scenarios", default="slot,100k", help="which to run, in order: slot, 100k")
    ap.add_argument("--latency-ms", type=int, default=30)
    ap.add_argument("--threads", type=int, default=4, help="worker threads (pipeline.worker_threads)")
    ap.add_argument("--fire-interval", type=float, default=30.0, help="sop.fire_interval_seconds")
    ap.add_argument("--max-minutes", type=float, default=15.0, help="give a scenario up after this long")
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"))
    ap.add_argument("--db-name", default="scrm_bench_sop_fire")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose scrm package is measured")
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL (PostgreSQL)")
    sys.path[:0] = [str(args.code.resolve()), str(ROOT)]

    import structlog

    import scrm
    from bench.pg_data import bench_database, mark_database
    from scrm.db import make_engine, migrate

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    print(f"code: {Path(scrm.__file__).parent.parent}", flush=True)
    groups = max(args.posts, args.slot_groups)
    marker = f"sop_fire groups={groups} stores={STORES} owners={OWNERS}"
    url, reuse = bench_database(args.database_url, args.db_name, marker, reuse=args.reuse)
    migrate(url)
    engine = make_engine(url)
    if reuse:
        print(f"data: reused {args.db_name} ({marker})", flush=True)
    else:
        t0 = time.monotonic()
        load_corp(engine, groups)
        mark_database(engine, args.db_name, marker)
        print(f"data: {STORES:,} stores, {groups:,} groups of {OWNERS} owners in {time.monotonic() - t0:.1f} s",
              flush=True)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scrm-bench-sop-fire-") as tmp:
        folder = Path(tmp)
        for name, body in TEMPLATES.items():
            (folder / f"{name}.yaml").write_text(textwrap.dedent(body), encoding="utf-8")
        slot_handed = None
        for scenario in args.scenarios.split(","):
            if scenario == "slot":
                slot_handed = run_scenario("08:00 slot", engine, args.slot_groups, args, folder, lines)
            elif scenario == "100k":
                run_scenario("100k", engine, args.posts, args, folder, lines)
            else:
                ap.error(f"unknown scenario {scenario!r}")
    print(f"\nsummary (threads {args.threads}, fire every {args.fire_interval:g} s, latency {args.latency_ms} ms, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for line in lines:
        print("  " + line)
    if "slot" in args.scenarios:
        verdict = ("not finished" if slot_handed is None else
                   f"{slot_handed / 60:.1f} min vs goal {SPREAD_SECONDS / 60:.0f} min: "
                   + ("met" if slot_handed <= SPREAD_SECONDS else "MISSED"))
        print(f"goal: a day's 08:00 slot for {args.slot_groups:,} groups handed to WeCom within the spread "
              f"window: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

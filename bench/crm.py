"""Benchmark: CRM ingest, follow-up records and the customer page on PostgreSQL at chain scale.

    python bench/crm.py [--messages 1000000] [--customers 50000] [--reps 200] [--heavy 10000]
                        [--database-url postgresql+psycopg://...] [--db-name scrm_bench_crm] [--reuse]

Prints each figure against its goal; asserts nothing about speed. Steps:

1. data: a dedicated database (``--db-name`` on the server of ``--database-url`` or
   ``SCRM_TEST_POSTGRES_URL``), tables from the models; ``--customers`` customers followed by
   ``--reps`` reps, each with a mobile in ``customer_mobiles`` (loaded with ``COPY``, as the
   contacts sync would have left them);
2. files: ``--messages`` messages written to a temp dir as the sources export them — chat-archive
   JSON lines (~80%: text, image, voice, file, link, weapp, some group chats, ~0.5% recalled, a
   few switch lines) and call-centre / SMS-gateway CSV (~10% each, the mobile written three ways,
   ~2% from unknown mobiles) — over 120 days in conversations of a few messages; one customer
   (``wmBenchHeavy000001``) has ``--heavy`` of them;
3. import: through :func:`scrm.crm.ingest.import_chats` / ``import_calls`` / ``import_sms`` (what
   ``scrm crm import`` runs): messages/s against 5,000/s;
4. records: :func:`scrm.crm.service.rebuild_all` with the shipped rules: seconds and customers/s;
5. the heavy customer's page: the queries the page runs (header, first timeline page, the
   newest records), cold then the median of 5, against 0.5 s;
6. a re-import of the SMS file (idempotent: nothing created) and a summary.

``--reuse`` keeps the data of an earlier run with the same sizes and seed (messages and records
are emptied so the import is a first import again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

import scrm.models  # noqa: E402,F401
from bench.pg_data import bench_database, copy_lines, mark_database, ts  # noqa: E402
from scrm.config import CrmSettings  # noqa: E402
from scrm.crm.ingest import import_calls, import_chats, import_sms  # noqa: E402
from scrm.db import make_engine  # noqa: E402

DB_NAME = "scrm_bench_crm"
IMPORT_GOAL = 5000.0  # messages/s
PAGE_GOAL_S = 0.5
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
TZ = ZoneInfo("Asia/Shanghai")
HEAVY = "wmBenchHeavy000001"
QUESTIONS = ["请问200杯美式团购价多少钱一杯？", "下周三能送到吗？", "拿铁有没有优惠？", "可以开发票吗？",
             "退款什么时候到账？", "会员卡怎么办理？", "明天上午10点能送到张江吗？", "300杯拿铁打几折？"]
ANSWERS = ["您好，美式每杯18元，200杯以上每杯16元。", "可以的，下周三上午10点前送到。", "拿铁团购每杯22元。",
           "可以开发票，请把抬头和税号发我。", "退款3个工作日内原路退回。", "好的，我马上帮您处理。",
           "收到，已经安排门店准备。", "非常抱歉，我们马上核实。"]


def customer_id(i: int) -> str:
    return HEAVY if i == 0 else f"wmBench{i:011d}"


def mobile(i: int) -> str:
    return f"139{i:08d}"


def load_people(engine, customers: int, reps: int) -> dict[str, int]:
    """Customers, reps, follow relations and the mobile index, by COPY."""
    now = ts(NOW)
    emp = [f"rep{r:04d}\t销售{r:04d}\tf\tt\t{now}\t{now}\n" for r in range(reps)]
    cust, follow, mob = [], [], []
    for i in range(customers):
        ext = customer_id(i)
        cust.append(f"{ext}\t客户{i}\t[\"{mobile(i)}\"]\tactive\t{now}\t{now}\n")
        follow.append(f"rep{i % reps:04d}\t{ext}\t[]\t[\"{mobile(i)}\"]\tactive\t{now}\n")
        mob.append(f"+86{mobile(i)}\t{ext}\tremark_mobiles\t{now}\n")
    raw = engine.raw_connection()
    try:
        copy_lines(raw, "employees", ["userid", "name", "is_bot", "active", "created_at", "updated_at"], emp)
        copy_lines(raw, "customers", ["external_userid", "name", "mobiles", "status", "created_at", "updated_at"], cust)
        copy_lines(raw, "follow_relations", ["userid", "external_userid", "tag_ids", "remark_mobiles", "status",
                                             "updated_at"], follow)
        copy_lines(raw, "customer_mobiles", ["mobile", "external_userid", "source", "created_at"], mob)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    return {"customers": customers, "reps": reps}


def write_files(folder: Path, *, messages: int, customers: int, reps: int, heavy: int, seed: int) -> dict[str, int]:
    """The three export files; returns how many lines of each."""
    rnd = random.Random(seed)
    rest = messages - heavy
    # Messages per customer: the heavy one, then the rest spread unevenly (1..2x the mean) over the others.
    weights = [rnd.random() + 0.5 for _ in range(customers - 1)]
    scale = rest / sum(weights)
    counts = [heavy] + [max(1, round(w * scale)) for w in weights]
    counts[-1] += messages - sum(counts)
    start = NOW - dt.timedelta(days=120)
    n = {"chat": 0, "call": 0, "sms": 0, "revoke": 0, "switch": 0}
    with (open(folder / "chats.jsonl", "w", encoding="utf-8") as chats,
          open(folder / "calls.csv", "w", encoding="utf-8") as calls,
          open(folder / "sms.csv", "w", encoding="utf-8") as sms):
        calls.write("\ufeffcall_id,mobile,userid,direction,started_at,duration_seconds,status,summary\n")
        sms.write("sms_id,mobile,userid,direction,sent_at,content\n")
        for i, count in enumerate(counts):
            ext, rep = customer_id(i), f"rep{i % reps:04d}"
            written = 0
            while written < count:
                t = start + dt.timedelta(seconds=rnd.random() * 119 * 86400)
                for _ in range(min(count - written, rnd.randint(2, 9))):
                    t += dt.timedelta(seconds=rnd.randint(20, 1800))
                    written += 1
                    inbound = rnd.random() < 0.55
                    r = rnd.random()
                    unknown = rnd.random() < 0.02
                    digits = f"137{rnd.randint(0, 99_999_999):08d}" if unknown else mobile(i)
                    if r < 0.1:
                        n["call"] += 1
                        spelled = rnd.choice((f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}", f"86{digits}",
                                              f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"))
                        missed = rnd.random() < 0.15
                        local = t.astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")
                        calls.write(f"CALL{n['call']:09d},{spelled},{rep},{'in' if inbound else 'out'},{local},"
                                    f"{0 if missed else rnd.randint(20, 900)},{'missed' if missed else 'answered'},"
                                    f"{'' if missed else '沟通团购订单，确认数量和送达时间'}\n")
                        continue
                    if r < 0.2:
                        n["sms"] += 1
                        text = rnd.choice(QUESTIONS if inbound else ANSWERS)
                        sms.write(f"SMS{n['sms']:09d},+86{digits},{rep},{'in' if inbound else 'out'},"
                                  f"{t.isoformat()},{text}\n")
                        continue
                    n["chat"] += 1
                    msgid = f"bench{n['chat']:010d}_{int(t.timestamp() * 1000)}_external"
                    frm, to = (ext, [rep]) if inbound else (rep, [ext])
                    room = f"wrBench{i % 5000:06d}" if rnd.random() < 0.05 else ""
                    kind = rnd.random()
                    if kind < 0.8:
                        body = {"msgtype": "text", "text": {"content": rnd.choice(QUESTIONS if inbound else ANSWERS)}}
                    elif kind < 0.88:
                        body = {"msgtype": "image", "image": {"md5sum": "x", "filesize": 1024, "sdkfileid": "id"}}
                    elif kind < 0.93:
                        body = {"msgtype": "voice", "voice": {"voice_size": 4000, "play_length": rnd.randint(1, 60),
                                                              "sdkfileid": "id"}}
                    elif kind < 0.96:
                        body = {"msgtype": "file", "file": {"filename": "报价单.pdf", "fileext": "pdf",
                                                            "filesize": 20480}}
                    elif kind < 0.98:
                        body = {"msgtype": "link", "link": {"title": "企业团购下单指南", "link_url": "https://x"}}
                    else:
                        body = {"msgtype": "weapp", "weapp": {"title": "门店点单", "displayname": "咖啡"}}
                    chats.write(json.dumps({"msgid": msgid, "action": "send", "from": frm, "tolist": to,
                                            "roomid": room, "msgtime": int(t.timestamp() * 1000), **body},
                                           ensure_ascii=False) + "\n")
                    if rnd.random() < 0.005:
                        n["revoke"] += 1
                        chats.write(json.dumps({"msgid": f"revoke{n['revoke']:08d}", "action": "recall", "from": frm,
                                                "tolist": to, "roomid": room,
                                                "msgtime": int(t.timestamp() * 1000) + 30_000, "msgtype": "revoke",
                                                "revoke": {"pre_msgid": msgid}}) + "\n")
                    if rnd.random() < 0.0005:
                        n["switch"] += 1
                        chats.write(json.dumps({"msgid": f"switch{n['switch']:06d}", "action": "switch",
                                                "time": int(t.timestamp() * 1000), "user": rep}) + "\n")
    return n


def _line(what: str, value: float, unit: str, goal: float | None, *, higher: bool) -> str:
    if goal is None:
        return f"{what:<48} {value:>12,.1f} {unit}"
    ok = value >= goal if higher else value <= goal
    sign = ">=" if higher else "<="
    return f"{what:<48} {value:>12,.1f} {unit:<12} goal {sign} {goal:,.1f} {unit}: {'met' if ok else 'MISSED'}"


def open_page(engine, external_userid: str) -> tuple[float, dict[str, int]]:
    """What the customer page reads: header, first timeline page, newest records."""
    from scrm.crm import queries, service

    t0 = time.perf_counter()
    header = queries.customer_header(engine, external_userid)
    page = queries.timeline(engine, external_userid, page=1, customer_name=getattr(header, "name", ""))
    records = service.records_for(engine, external_userid, limit=20)
    return time.perf_counter() - t0, {"timeline_total": page.total, "shown": len(page.items), "records": len(records)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--heavy", type=int, default=10_000, help="messages of the one busy customer")
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"))
    ap.add_argument("--db-name", default=DB_NAME)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep-files", action="store_true", help="leave the generated files in the temp dir")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL (PostgreSQL)")
    marker = f"customers={args.customers} reps={args.reps} seed={args.seed}"
    url, reuse = bench_database(args.database_url, args.db_name, marker, reuse=args.reuse)
    engine = make_engine(url)
    figures: list[str] = []
    if reuse:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE crm_messages, crm_followups, crm_followup_edits, crm_service_events"))
        print(f"data: reused {args.db_name} ({marker})", flush=True)
    else:
        SQLModel.metadata.create_all(engine)
        t0 = time.monotonic()
        counts = load_people(engine, args.customers, args.reps)
        mark_database(engine, args.db_name, marker)
        print(f"data: {', '.join(f'{k}={v:,}' for k, v in counts.items())} in {time.monotonic() - t0:.0f} s",
              flush=True)

    folder = Path(tempfile.mkdtemp(prefix="scrm-bench-crm-"))
    try:
        t0 = time.monotonic()
        lines = write_files(folder, messages=args.messages, customers=args.customers, reps=args.reps,
                            heavy=args.heavy, seed=args.seed)
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
        print(f"files: {', '.join(f'{k}={v:,}' for k, v in lines.items())} "
              f"({sum(sizes.values()) / 1e6:,.0f} MB) in {time.monotonic() - t0:.0f} s in {folder}", flush=True)

        created = 0
        t0 = time.monotonic()
        for name, run in (("chats.jsonl", import_chats), ("calls.csv", import_calls), ("sms.csv", import_sms)):
            report = run(engine, folder / name, now=NOW)
            created += report.created
            print(f"import {name}: read {report.read:,} created {report.created:,} revoked {report.revoked:,} "
                  f"skipped {report.skipped:,} unmatched {report.unmatched:,} refused {report.refused} "
                  f"customers {len(report.customers):,} in {report.seconds:.1f} s "
                  f"({report.created / report.seconds:,.0f}/s)", flush=True)
        seconds = time.monotonic() - t0
        figures.append(_line(f"import, {created:,} messages", created / seconds, "messages/s", IMPORT_GOAL,
                             higher=True))
        figures.append(_line("import, total time", seconds, "s", None, higher=False))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE crm_messages"))

        from scrm.crm import service

        settings = CrmSettings(rules_dir=ROOT / "crm")
        try:
            t0 = time.monotonic()
            built = service.rebuild_all(engine, now=NOW, settings=settings, tz=TZ)
            seconds = time.monotonic() - t0
            print(f"records: {built.customers:,} customers, {built.records:,} records, {built.events:,} events "
                  f"in {seconds:.1f} s", flush=True)
            figures.append(_line(f"records built ({built.records:,})", built.records / seconds, "records/s", None,
                                 higher=True))
            figures.append(_line(f"records, {built.customers:,} customers", seconds, "s", None, higher=False))
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("ANALYZE crm_followups"))
        except NotImplementedError:
            print("records: scrm.crm.service.rebuild_all is still a stub: no records built", flush=True)

        try:
            cold, shape = open_page(engine, HEAVY)
            warm = statistics.median(open_page(engine, HEAVY)[0] for _ in range(5))
            print(f"page of {HEAVY}: {shape}, cold {cold * 1000:.0f} ms, warm median {warm * 1000:.0f} ms", flush=True)
            figures.append(_line(f"customer page, {shape['timeline_total']:,} messages (cold)", cold, "s",
                                 PAGE_GOAL_S, higher=False))
            figures.append(_line("customer page (warm, median of 5)", warm, "s", PAGE_GOAL_S, higher=False))
        except (ImportError, AttributeError, NotImplementedError) as exc:
            print(f"page: the page's queries are not available ({exc})", flush=True)

        again = import_sms(engine, folder / "sms.csv", now=NOW)
        print(f"re-import sms.csv: created {again.created}, unchanged {again.unchanged:,} in {again.seconds:.1f} s",
              flush=True)
    finally:
        if not args.keep_files:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nsummary (load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for f in figures:
        print("  " + f)
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

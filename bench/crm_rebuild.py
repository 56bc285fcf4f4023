"""Benchmark: the CRM follow-up rebuild alone on PostgreSQL (first build, a full rebuild with
nothing new, the nightly pass that reads only customers whose records can change).

    python bench/crm_rebuild.py [--messages 100000] [--customers 5000] [--reps 100] [--heavy 2000]
                                [--database-url postgresql+psycopg://...] [--db-name scrm_bench_crm_rebuild]
                                [--reuse] [--code DIR]

The data is bench/crm.py's world (people by COPY, the three export files through the real
importers) in a dedicated database; ``--reuse`` keeps the imported messages of an earlier run with
the same sizes and empties only the records and events. ``--code DIR`` imports ``scrm`` from another
checkout (a worktree of an older commit) to measure the code before a change on the same data:
there ``rebuild_all`` has no ``only_changed`` and always rebuilds everyone. Prints figures and the
load average; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--heavy", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL"))
    ap.add_argument("--db-name", default="scrm_bench_crm_rebuild")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose scrm package is measured")
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL (PostgreSQL)")
    sys.path[:0] = [str(args.code.resolve()), str(ROOT)]

    import sqlalchemy as sa
    from sqlmodel import SQLModel

    import scrm
    import scrm.models  # noqa: F401
    from bench.crm import NOW, TZ, load_people, write_files
    from bench.pg_data import bench_database, mark_database
    from scrm.config import CrmSettings
    from scrm.crm import service
    from scrm.crm.ingest import import_calls, import_chats, import_sms
    from scrm.db import make_engine

    print(f"code: {Path(scrm.__file__).parent.parent}", flush=True)
    marker = f"messages={args.messages} customers={args.customers} reps={args.reps} seed={args.seed}"
    url, reuse = bench_database(args.database_url, args.db_name, marker, reuse=args.reuse)
    engine = make_engine(url)
    if reuse:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE crm_followups, crm_service_events"))
        print(f"data: reused {args.db_name} ({marker})", flush=True)
    else:
        SQLModel.metadata.create_all(engine)
        load_people(engine, args.customers, args.reps)
        with tempfile.TemporaryDirectory(prefix="scrm-bench-crm-rebuild-") as folder:
            write_files(Path(folder), messages=args.messages, customers=args.customers, reps=args.reps,
                        heavy=args.heavy, seed=args.seed)
            t0 = time.monotonic()
            for name, run in (("chats.jsonl", import_chats), ("calls.csv", import_calls), ("sms.csv", import_sms)):
                run(engine, Path(folder) / name, now=NOW)
            print(f"data: imported in {time.monotonic() - t0:.0f} s", flush=True)
        mark_database(engine, args.db_name, marker)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE crm_messages"))
    with engine.connect() as conn:
        messages = conn.execute(sa.text("SELECT count(*) FROM crm_messages WHERE external_userid IS NOT NULL")).scalar()

    settings = CrmSettings(rules_dir=ROOT / "crm")
    selective = "only_changed" in inspect.signature(service.rebuild_all).parameters
    lines = []

    def step(label: str, now, **kw) -> None:
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        r = service.rebuild_all(engine, now=now, settings=settings, tz=TZ, **kw)
        seconds = time.monotonic() - t0
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in r.steps.items())
        line = (f"{label}: {seconds:.1f} s ({messages / seconds:,.0f} msg/s) customers {r.customers:,} "
                f"skipped {getattr(r, 'skipped', 0):,} created {r.created:,} updated {r.updated:,} "
                f"events {r.events:,} [{steps}] load {load:.2f}")
        print(line, flush=True)
        lines.append(line)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE crm_followups"))

    full = {"only_changed": False} if selective else {}
    step("first rebuild", NOW, **full)
    step("full rebuild, nothing new", NOW, **full)
    if selective:
        step("nightly (only changed), nothing new", NOW)
        import datetime as dt

        step("nightly a day later (clock steps due)", NOW + dt.timedelta(days=1))
    print(f"\nsummary, {messages:,} messages ({marker}), load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for line in lines:
        print("  " + line)
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

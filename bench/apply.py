"""Callback workers' throughput, as production runs: the sandbox as its own server process with
WeCom's round trip (``--latency-ms``, default 30), ``scrm worker`` processes, PostgreSQL and Redis on
loopback. Prints events/s against the goals, counts exactly-once, and splits each event's cost.

    SCRM_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:55432/postgres \\
        python bench/apply.py --events 20000 --workers 2

The events (proportions of a store campaign afternoon; ``--events`` in all):
  60 % contact added through a code with a welcome code: the worker sends the welcome
       (externalcontact/send_welcome_msg) and fetches the contact (externalcontact/get);
  22 % a customer joins a group, 15 % one leaves (externalcontact/groupchat/get each);
   3 % a corp tag changed (externalcontact/get_corp_tag_list, the whole library re-read).
They are stored as pending ``callback_inbox`` rows with the event XML the receiver stores, and
enqueued the way the receiver does (``workers.actors.enqueue_callbacks``, 256 ids per group
commit). Timing starts at the first enqueue and ends when no row is pending.

Each contact-add event's CreateTime, and its welcome code's issue time in the sandbox, are an hour
ahead: a backlog of 20,000 takes longer than WeCom's 20 s welcome window, and an expired window
would skip the welcome send this bench means to measure.

Redis: a database of its own (``--redis-url``, default db 13), flushed before and after. PostgreSQL:
a dedicated database (``--db-name``), recreated on every run. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORP_ID = "ww0000sandboxcorp"
MEMBERS = 50
GROUP_START_CUSTOMERS = 10
TAG_GROUPS, TAGS_PER_GROUP = 10, 10
SHARES = {"contact_add": 0.60, "group_join": 0.22, "group_leave": 0.15, "tag_change": 0.03}
GOAL_PER_WORKER, GOAL_MACHINE = 500.0, 1000.0
AHEAD = 3600  # seconds: see the module docstring (welcome window)
ENQUEUE_BATCH = 256


# -- the plan: the same in this process and in the sandbox's (setup) -------------------------------
def plan(events: int, seed: int, base_time: int) -> dict:
    """Every event, in the order they are stored, and the corp's final state they lead to."""
    rng = random.Random(seed)
    members = [f"u{i:03d}" for i in range(MEMBERS)]
    counts = {k: int(events * v) for k, v in SHARES.items()}
    counts["contact_add"] += events - sum(counts.values())
    n_groups = max(10, events // 10)
    groups = {}
    for g in range(n_groups):
        chat_id = f"wrb{g:06d}"
        start = [f"gc{g:06d}_{k:02d}" for k in range(GROUP_START_CUSTOMERS)]
        groups[chat_id] = {"owner": members[g % MEMBERS], "start": start, "joined": [], "left": [],
                           "versions": [f"v{g:06d}_000"]}
    tag_ids = [f"etb{g:02d}_{t:02d}" for g in range(TAG_GROUPS) for t in range(TAGS_PER_GROUP)]
    kinds = [k for k, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    out = []
    adds = joins = 0
    chat_ids = list(groups)
    for kind in kinds:
        if kind == "contact_add":
            out.append({"kind": kind, "userid": members[adds % MEMBERS], "external_userid": f"wmb{adds:07d}",
                        "welcome_code": f"WCB{adds:07d}", "time": base_time + AHEAD})
            adds += 1
        elif kind == "tag_change":
            # a distinct CreateTime: the same tag at the same second would be one event (deduplicated)
            out.append({"kind": kind, "tag_id": rng.choice(tag_ids), "time": base_time - len(out)})
        else:
            while True:
                chat_id = rng.choice(chat_ids)
                grp = groups[chat_id]
                if kind == "group_join" or len(grp["left"]) < len(grp["start"]):
                    break
            if kind == "group_join":
                who = f"gj{joins:07d}"
                joins += 1
                grp["joined"].append(who)
            else:
                who = grp["start"][len(grp["left"])]
                grp["left"].append(who)
            last = grp["versions"][-1]
            cur = f"v{chat_id[3:]}_{len(grp['versions']):03d}"
            grp["versions"].append(cur)
            out.append({"kind": kind, "chat_id": chat_id, "member": who, "last": last, "cur": cur, "time": base_time})
    for grp in groups.values():
        grp["final"] = [grp["owner"]] + [c for c in grp["start"] if c not in set(grp["left"])] + grp["joined"]
    return {"events": out, "groups": groups, "members": members, "tag_ids": tag_ids, "counts": counts}


def event_xml(e: dict) -> str:
    from scrm.wecom.events import CHAT, CONTACT, TAG, render_event

    if e["kind"] == "contact_add":
        return render_event(CORP_ID, CONTACT, "add_external_contact", e["time"], UserID=e["userid"],
                            ExternalUserID=e["external_userid"], WelcomeCode=e["welcome_code"])
    if e["kind"] == "tag_change":
        return render_event(CORP_ID, TAG, "update", e["time"], Id=e["tag_id"], TagType="tag")
    join = e["kind"] == "group_join"
    fields: dict = {"ChatId": e["chat_id"], "UpdateDetail": "add_member" if join else "del_member"}
    fields["JoinScene" if join else "QuitScene"] = 3 if join else 0
    fields.update(MemChangeCnt=1, MemChangeList=[e["member"]], LastMemVer=e["last"], CurMemVer=e["cur"])
    return render_event(CORP_ID, CHAT, "update", e["time"], **fields)


def seed_sandbox(sandbox, arg: dict) -> None:
    """Runs in the sandbox process: the members, customers, groups (final membership), tags and
    welcome codes the events name."""
    from scrm.sandbox import state as st

    p = plan(arg["events"], arg["seed"], arg["base_time"])
    for u in p["members"]:
        sandbox.add_member(u, f"店员{u}")
    now = arg["base_time"]
    for e in p["events"]:
        if e["kind"] == "contact_add":
            eid = e["external_userid"]
            sandbox.customers[eid] = st.Customer(eid, f"顾客{eid[-5:]}", unionid=f"oz{eid}")
            sandbox.follows[(e["userid"], eid)] = st.Follow(e["userid"], eid, createtime=now, oper_userid=eid)
            sandbox.welcome_codes[e["welcome_code"]] = st.WelcomeCode(e["welcome_code"], e["userid"], eid,
                                                                      issued_at=e["time"])
    for chat_id, grp in p["groups"].items():
        for c in grp["start"] + grp["joined"]:
            sandbox.customers[c] = st.Customer(c, f"群友{c[-4:]}", unionid=f"oz{c}")
        g = st.Group(chat_id, f"门店群{chat_id[-4:]}", grp["owner"], now)
        g.members = [st.GroupMember(m, 1 if m == grp["owner"] else 2, now, 1 if m == grp["owner"] else 3)
                     for m in grp["final"]]
        g.member_version = grp["versions"][-1]
        sandbox.groups[chat_id] = g
    for gi in range(TAG_GROUPS):
        gid = f"etbg{gi:02d}"
        ids = [t for t in p["tag_ids"] if t.startswith(f"etb{gi:02d}_")]
        sandbox.tag_groups[gid] = st.TagGroup(gid, f"标签组{gi}", now, tag_ids=ids)
        for t in ids:
            sandbox.tags[t] = st.Tag(t, f"标签{t[-5:]}", gid, now)


# -- /proc ---------------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(d.name))
    return kids


def _cpu(pid: int) -> float:
    try:
        f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def tree_cpu(pid: int) -> float:
    kids = _children()
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        total += _cpu(p)
        todo.extend(kids.get(p, []))
    return total


def cpu_by_kind(worker_pids: list[int], sandbox_pid: int, db_name: str) -> dict[str, float]:
    out = {"worker": sum(tree_cpu(p) for p in worker_pids), "sandbox": tree_cpu(sandbox_pid),
           "postgres (this bench's backends)": 0.0, "postgres (other, shared)": 0.0, "redis (shared)": 0.0}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("postgres"):
            key = "postgres (this bench's backends)" if f" {db_name} " in cmd else "postgres (other, shared)"
            out[key] += _cpu(int(d.name))
        elif "redis-server" in cmd and "6379" in cmd:
            out["redis (shared)"] += _cpu(int(d.name))
    return out


# -- the run -------------------------------------------------------------------------------------
def _load_rows(engine, p: dict) -> list[int]:
    from scrm.callbacks.ingest import store_batch
    from scrm.callbacks.models import InboxStatus
    from scrm.wecom.events import dedup_key, parse_event

    ids: list[int] = []
    rows = []
    for e in p["events"]:
        xml = event_xml(e)
        ev = parse_event(xml)
        rows.append(dict(dedup_key=dedup_key(xml), corp_id=CORP_ID, event=ev.event, change_type=ev.change_type,
                         plaintext=xml, status=InboxStatus.pending, attempts=0))
    for i in range(0, len(rows), 2000):
        ids.extend(x for x in store_batch(engine, rows[i:i + 2000]) if x is not None)
    return ids


def _wait_ready(logs: list[Path], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("ready for action" in (lg.read_text(errors="replace") if lg.exists() else "") for lg in logs):
            return
        time.sleep(0.2)
    print("warning: workers did not say they were ready; going on", flush=True)


def _log_lines(logs: list[Path]):
    """The JSON objects of the workers' logs; threads writing at once may put two on one line."""
    decoder = json.JSONDecoder()
    for lg in logs:
        for line in lg.read_text(errors="replace").splitlines():
            pos = line.find("{")
            while pos != -1:
                try:
                    obj, end = decoder.raw_decode(line, pos)
                except ValueError:
                    pos = line.find("{", pos + 1)
                    continue
                if isinstance(obj, dict):
                    yield obj
                pos = line.find("{", end)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2, help="scrm worker processes")
    ap.add_argument("--threads", type=int, default=None, help="--threads per worker (default: the setting's)")
    ap.add_argument("--latency-ms", type=int, default=30)
    ap.add_argument("--database-url", default=os.environ.get("SCRM_TEST_POSTGRES_URL", ""))
    ap.add_argument("--db-name", default="scrm_bench_apply")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    if not args.database_url:
        ap.error("give --database-url or set SCRM_TEST_POSTGRES_URL (PostgreSQL)")

    import httpx
    import redis
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    import scrm.models  # noqa: F401 - every table
    from bench.pg_data import bench_database
    from bench.sandbox_proc import SANDBOX_SECRET, sandbox_process
    from scrm.db import make_engine

    base_time = int(time.time())
    p = plan(args.events, args.seed, base_time)
    url, _ = bench_database(args.database_url, args.db_name, "", reuse=False)
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    r = redis.Redis.from_url(args.redis_url)
    r.flushdb()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    print(f"bench/apply.py at {git}: {args.events:,} events "
          f"({', '.join(f'{k} {v:,}' for k, v in p['counts'].items())}), {args.workers} worker process(es), "
          f"threads={args.threads or 'setting default'}, WeCom latency {args.latency_ms} ms", flush=True)
    print(f"load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)

    t_seed = time.monotonic()
    setup_arg = {"events": args.events, "seed": args.seed, "base_time": base_time}
    workdir = Path(tempfile.mkdtemp(prefix="scrm-bench-apply-"))
    procs: list[subprocess.Popen] = []
    with sandbox_process(latency_ms=args.latency_ms, setup="bench.apply:seed_sandbox", setup_arg=setup_arg,
                         corp_id=CORP_ID, secret=SANDBOX_SECRET) as sb:
        ids = _load_rows(engine, p)
        print(f"set up in {time.monotonic() - t_seed:.1f} s: sandbox seeded, {len(ids):,} inbox rows pending",
              flush=True)
        env = {**os.environ, "SCRM_DATABASE__URL": url, "SCRM_REDIS__URL": args.redis_url,
               "SCRM_WECOM__API_BASE_URL": sb.api_base_url, "SCRM_WECOM__SECRET": SANDBOX_SECRET,
               "SCRM_WECOM__CORP_ID": CORP_ID, "SCRM_LOG_JSON": "true", "SCRM_LOG_LEVEL": "INFO",
               "SCRM_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT)}
        env.pop("SCRM_CONFIG", None)
        scrm_bin = str(Path(sys.executable).with_name("scrm"))
        logs = [workdir / f"worker{i}.log" for i in range(args.workers)]
        try:
            for lg in logs:
                cmd = [scrm_bin, "worker", "--processes", "1"]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                procs.append(subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                              stderr=lg.open("w"), start_new_session=True))
            _wait_ready(logs)
            pids = [pr.pid for pr in procs]
            cpu0 = cpu_by_kind(pids, sb.process.pid, args.db_name)
            from workers.actors import enqueue_callbacks
            from workers.broker import setup_broker

            setup_broker(url=args.redis_url)
            t0 = time.monotonic()
            for i in range(0, len(ids), ENQUEUE_BATCH):
                enqueue_callbacks(ids[i:i + ENQUEUE_BATCH])
            pending = len(ids)
            deadline = t0 + args.timeout
            with engine.connect() as conn:
                while pending and time.monotonic() < deadline:
                    time.sleep(0.1)
                    pending = conn.execute(sa.text("SELECT count(*) FROM callback_inbox WHERE status = 'pending'")
                                           ).scalar_one()
                    conn.rollback()
            elapsed = time.monotonic() - t0
            cpu1 = cpu_by_kind(pids, sb.process.pid, args.db_name)
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            welcomes = httpx.get(sb.base_url + "/sandbox/welcome_messages", timeout=60).json()["welcome_messages"]
        finally:
            for pr in procs:
                if pr.poll() is None:
                    os.killpg(pr.pid, signal.SIGTERM)
            for pr in procs:
                try:
                    pr.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(pr.pid, signal.SIGKILL)
            r.flushdb()

    n = len(ids)
    done = n - pending
    rate = done / elapsed if elapsed else 0.0
    print(f"\napplied {done:,}/{n:,} in {elapsed:.1f} s (pending left: {pending:,}); load average at end: {load}")
    print(f"  events/s on the machine:    {rate:8.0f}   goal >= {GOAL_MACHINE:,.0f}   "
          f"ratio {rate / GOAL_MACHINE:.2f}")
    per = rate / args.workers
    print(f"  events/s per worker process:{per:8.0f}   goal >= {GOAL_PER_WORKER:,.0f}   "
          f"ratio {per / GOAL_PER_WORKER:.2f}")

    # exactly-once
    print("\nexactly-once:")
    with engine.connect() as conn:
        status = dict(conn.execute(sa.text("SELECT status, count(*) FROM callback_inbox GROUP BY status")).all())
        attempts = dict(conn.execute(sa.text("SELECT attempts, count(*) FROM callback_inbox WHERE status = 'done' "
                                             "GROUP BY attempts ORDER BY attempts")).all())
        noted = conn.execute(sa.text("SELECT count(*) FROM callback_inbox WHERE last_error IS NOT NULL")).scalar_one()
        sends = dict(conn.execute(sa.text("SELECT outcome, count(*) FROM welcome_sends GROUP BY outcome")).all())
        follows = conn.execute(sa.text("SELECT count(*), count(DISTINCT external_userid) FROM follow_relations "
                                       "WHERE external_userid LIKE 'wmb%'")).one()
        stored = defaultdict(set)
        for chat_id, member_id in conn.execute(sa.text("SELECT chat_id, member_id FROM group_members "
                                                       "WHERE state = 'member'")):
            stored[chat_id].add(member_id)
        tags = conn.execute(sa.text("SELECT count(*) FROM tags WHERE NOT deleted")).scalar_one()
    adds = p["counts"]["contact_add"]
    codes = Counter(w["welcome_code"] for w in welcomes)
    expected_codes = {e["welcome_code"] for e in p["events"] if e["kind"] == "contact_add"}
    touched = {e["chat_id"] for e in p["events"] if "chat_id" in e}
    wrong_groups = sum(1 for c in touched if stored.get(c, set()) != set(p["groups"][c]["final"]))
    applied = Counter(line.get("inbox_id") for line in _log_lines(logs) if line.get("event") == "callback_applied")
    twice = sum(1 for v in applied.values() if v > 1)
    checks = [
        ("inbox rows done", status.get("done", 0), n),
        ("inbox rows failed", status.get("failed", 0), 0),
        ("callback_applied log lines (one per row)", sum(applied.values()), n),
        ("rows applied more than once (log)", twice, 0),
        ("welcomes in the sandbox", len(welcomes), adds),
        ("welcome codes used twice", sum(1 for v in codes.values() if v > 1), 0),
        ("contact-adds without their welcome", len(expected_codes - set(codes)), 0),
        ("welcome_sends 'sent'", sends.get("sent", 0), adds),
        ("follow relations (distinct customers)", follows[1], adds),
        ("follow relation rows", follows[0], adds),
        ("groups whose members differ from WeCom's", wrong_groups, 0),
        ("tags stored", tags, TAG_GROUPS * TAGS_PER_GROUP),
    ]
    for what, got, want in checks:
        print(f"  {'ok  ' if got == want else 'FAIL'} {what}: {got:,} (expected {want:,})")
    print(f"  attempts of done rows: {dict(sorted(attempts.items()))} (more than 1: a retried row, applied once); "
          f"rows with a note: {noted}; welcome outcomes: {sends}")

    # cost split
    print("\nper-event cost split (means over the workers' callback_applied log lines):")
    split = defaultdict(list)
    for line in _log_lines(logs):
        if line.get("event") == "callback_applied":
            for key in ("wecom_ms", "db_ms", "queued_ms", "total_ms"):
                if isinstance(line.get(key), (int, float)):
                    split[key].append(float(line[key]))
    if split:
        for key in ("wecom_ms", "db_ms", "queued_ms", "total_ms"):
            vals = sorted(split.get(key, []))
            if vals:
                print(f"  {key:10s} mean {sum(vals) / len(vals):9.1f}   p50 {vals[len(vals) // 2]:9.1f}   "
                      f"p95 {vals[int(len(vals) * 0.95)]:9.1f}")
    else:
        print("  not logged by this version of the worker (no wecom_ms/db_ms/queued_ms on callback_applied)")
    calls = {"contact_add": 2, "group_join": 1, "group_leave": 1, "tag_change": 1}
    total_calls = sum(calls[k] * v for k, v in p["counts"].items())
    print(f"  WeCom calls: ~{total_calls:,} ({total_calls / n:.2f} per event, {args.latency_ms} ms each, "
          f"plus the tag hook's reads)")

    print(f"\nCPU seconds during the run (2 cores: at most {2 * elapsed:.0f} s available):")
    for key in cpu1:
        used = cpu1[key] - cpu0[key]
        print(f"  {key:34s} {used:7.1f} s   {1000 * used / max(done, 1):6.2f} ms/event")
    print(f"\nworker logs: {workdir}")
    return 0 if all(got == want for _, got, want in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The production shape as separate processes on loopback: two ``scrm serve`` behind no balancer
(the test spreads the burst over both, as a load balancer would), two ``scrm worker``, two
``scrm scheduler`` (one active under the Redis lock, one standby), PostgreSQL and a real Redis.

A burst of held WeCom callbacks (store-QR scans with welcomes, new groups, members joining and
leaving, tag edits) goes through both web processes at once, with one in ten posted again to the
other process as WeCom's retry; one worker is killed mid-burst. Then every event is applied once,
the database matches the sandbox corp, and the SOP ledger the scheduler wrote and fired holds
every limit (≤3 posts a group a day, ≤1 mass send a group a day, ≤ the bot cap of groups per
owner), with no group sent a mass message twice.

Exactly once is read off the workers' own ``callback_applied`` log lines (a job killed between
its commit and its log line can only lose a line, never add one); the rows' ``attempts`` are not
used for it, since a WeCom fetch that failed and was retried legitimately counts two attempts.

Tried: dispatch's claim made unconditional (the status check and the early return dropped): rows
were applied up to four times, the test failed. The scheduler's lock ignored (``held`` forced true):
both schedulers logged ``scheduler_active``, the test failed on that count.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from scrm.config import SANDBOX_CORP_ID
from scrm.redisserver import free_port
from scrm.sandbox import Sandbox
from scrm.sandbox import serve as serve_sandbox
from scrm.wecom.client import WeComClient
from scrm.wecom.crypto import CallbackCrypto
from tests.conftest import fresh_postgres_database
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow]

SECRET = "scale-out-secret"
TOKEN = "scaleOutToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OWNERS = ["store_a", "store_b", "store_c"]
GROUPS_PER_OWNER = 4
BOT_CAP = 3  # sop.max_groups_per_bot: each owner's fourth group gets no posts
CUSTOMERS = 90


def _daytime_zone() -> str:
    """A fixed-offset zone where it is now about noon, so the SOP posts the test plans are outside
    quiet hours whenever the suite runs."""
    hours = 12 - dt.datetime.now(dt.UTC).hour
    return "Etc/UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"  # Etc/GMT-8 is UTC+8


@pytest.fixture
def pg_url():
    from scrm.db import migrate

    with fresh_postgres_database("scrm_scale") as url:
        migrate(url)
        yield url


def _write_templates(folder: Path, tz: str) -> None:
    """Four posts a group would like (two mass sends), all due already: the planner keeps three,
    one of them a mass send."""
    folder.mkdir()
    now = dt.datetime.now(ZoneInfo(tz))
    at = [(now - dt.timedelta(minutes=m)).strftime("%H:%M") for m in (4, 3, 2, 1)]
    (folder / "lunch.yaml").write_text(f"""id: scale-lunch
name: 午间特惠
priority: 70
steps:
  - id: deal
    at: "{at[0]}"
    channel: mass_send
    text: 午间特惠，今天下单立减5元
  - id: remind
    at: "{at[1]}"
    channel: owner_task
    text: 午间特惠还剩一小时
""", encoding="utf-8")
    (folder / "tea.yaml").write_text(f"""id: scale-tea
name: 下午茶
priority: 40
steps:
  - id: tea
    at: "{at[2]}"
    channel: mass_send
    text: 下午茶第二杯半价
  - id: snack
    at: "{at[3]}"
    channel: owner_task
    text: 下午茶小食上新
""", encoding="utf-8")


class Processes:
    """The scrm processes of the test, each in its own session (a kill takes its children), with
    their output in files for the failure message."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-c", "from scrm.cli import main; main()", *args], env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _build_burst(sandbox: Sandbox, client: WeComClient) -> dict:
    """Run the corp's afternoon in the sandbox with callbacks held; returns what the corp now is."""
    sandbox.hold_callbacks(True)
    ways = {o: client.add_contact_way(type=1, scene=2, state=f"store:{o}", user=[o])["config_id"] for o in OWNERS}
    customers: list[str] = []
    for i in range(CUSTOMERS):
        owner = OWNERS[i % len(OWNERS)]
        customers.append(sandbox.scan_contact_way(ways[owner], name=f"顾客{i}")["external_userid"])
    chats: list[str] = []
    for k, owner in enumerate(OWNERS):
        mine = customers[k::len(OWNERS)]
        for g in range(GROUPS_PER_OWNER):
            first = mine[g * 5:(g + 1) * 5]
            chats.append(sandbox.employee_creates_group(owner, f"{owner}福利群{g + 1}", first)["chat_id"])
    for n, chat in enumerate(chats):
        for j in range(4):  # newcomers invited, then some earlier members leave
            sandbox.invite_to_group(chat, name=f"新朋友{n}-{j}")
        members = [m for m in sandbox.groups[chat].member_ids() if m.startswith("wm")]
        sandbox.leave_group(chat, members[0])
    for t in range(3):
        sandbox.admin_create_tag(f"扩容标签{t}", group_name="扩容测试")
    return {"customers": customers, "chats": chats}


def _post_burst(crypto: CallbackCrypto, plaintexts: list[str], web: list[str]) -> list[int]:
    """Every held callback through one web process, alternating, 16 at a time; one in ten again
    through the other process (WeCom retries a delivery it thinks failed)."""
    jobs = [(p, web[i % 2]) for i, p in enumerate(plaintexts)]
    jobs += [(p, web[(i + 1) % 2]) for i, p in enumerate(plaintexts) if i % 10 == 0]

    def post(job: tuple[str, str]) -> int:
        plaintext, base = job
        params, body = crypto.seal(plaintext)
        with httpx.Client(timeout=30) as http:
            return http.post(f"{base}/wecom/callback", params=params, content=body.encode()).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(post, jobs))


def _scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _rows(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_two_web_two_workers_two_schedulers_apply_each_event_once_and_keep_sop_limits(pg_url, redis_url, tmp_path):
    from scrm.db import make_engine

    tz = _daytime_zone()
    templates = tmp_path / "sop"
    _write_templates(templates, tz)
    web_ports = [free_port(), free_port()]
    web = [f"http://127.0.0.1:{p}" for p in web_ports]
    sandbox = Sandbox(SANDBOX_CORP_ID, SECRET, callback_token=TOKEN, encoding_aes_key=AES_KEY,
                      callback_url=f"{web[0]}/wecom/callback", rate_limit_per_minute=0)
    for owner in OWNERS:
        sandbox.add_member(owner, f"店长{owner[-1].upper()}")
    server = serve_sandbox(sandbox, "127.0.0.1", 0)
    client = WeComClient(SANDBOX_CORP_ID, SECRET, server.api_base_url)
    crypto = CallbackCrypto(TOKEN, AES_KEY, SANDBOX_CORP_ID)
    env = dict(
        os.environ,
        SCRM_DATABASE__URL=pg_url, SCRM_REDIS__URL=redis_url, SCRM_DATA_DIR=str(tmp_path / "data"),
        SCRM_WECOM__CORP_ID=SANDBOX_CORP_ID, SCRM_WECOM__SECRET=SECRET, SCRM_WECOM__API_BASE_URL=server.api_base_url,
        SCRM_WECOM__CALLBACK_TOKEN=TOKEN, SCRM_WECOM__ENCODING_AES_KEY=AES_KEY,
        SCRM_WEB__SESSION_SECRET="scale-out-session-secret",
        SCRM_SOP__TEMPLATES_DIR=str(templates), SCRM_SOP__TIMEZONE=tz, SCRM_SOP__SPREAD_MINUTES="0",
        SCRM_SOP__MIN_SPACING_MINUTES="0", SCRM_SOP__MAX_GROUPS_PER_BOT=str(BOT_CAP),
        SCRM_SOP__FIRE_INTERVAL_SECONDS="1", SCRM_SOP__PLAN_INTERVAL_SECONDS="3",
        SCRM_PIPELINE__RELAY_AFTER_SECONDS="3", SCRM_PIPELINE__RELAY_INTERVAL_SECONDS="2",
        SCRM_LOG_JSON="false", PYTHONUNBUFFERED="1",
    )
    (tmp_path / "data").mkdir()
    procs = Processes(env, tmp_path)
    engine = make_engine(pg_url)
    try:
        for i, port in enumerate(web_ports):
            procs.start(f"web{i}", "serve", "--port", str(port))
        procs.start("worker0", "worker", "--processes", "1", "--threads", "4")
        procs.start("worker1", "worker", "--processes", "1", "--threads", "4")
        procs.start("scheduler0", "scheduler")
        procs.start("scheduler1", "scheduler")

        def up(base: str) -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: all(up(b) for b in web), timeout=90, what="both web processes to answer /healthz")
        corp = _build_burst(sandbox, client)
        plaintexts = [d.plaintext for d in sandbox.poster.queue]
        sandbox.poster.queue.clear()
        events = len(plaintexts)
        assert events >= CUSTOMERS + len(OWNERS) * GROUPS_PER_OWNER * 6 + 3  # scans, group changes, tags

        with ThreadPoolExecutor(1) as burst:
            posted = burst.submit(_post_burst, crypto, plaintexts, web)
            wait_until(lambda: (_scalar(engine, "SELECT count(*) FROM callback_inbox WHERE status = 'done'") or 0)
                       >= events // 4, timeout=120, interval=0.05, what="a quarter of the burst to be applied")
            procs.kill("worker0")  # mid-burst: its in-flight jobs die with it
            statuses = posted.result(timeout=180)
        assert set(statuses) == {200}, Counter(statuses)
        active = [n for n in ("scheduler0", "scheduler1") if "scheduler_active" in procs.log(n)]
        assert len(active) == 1, f"schedulers active at once: {active}"

        wait_until(lambda: _scalar(engine, "SELECT count(*) FROM callback_inbox WHERE status = 'done'") == events,
                   timeout=180, interval=0.2,
                   what="every callback applied by the surviving worker (the relay re-queues the dead one's)")
        assert _scalar(engine, "SELECT count(*) FROM callback_inbox") == events  # retries deduplicated
        applied = Counter(int(m.group(1)) for n in ("worker0", "worker1") for line in procs.log(n).splitlines()
                          if "callback_applied" in line and (m := re.search(r"inbox_id=(\d+)", line)))
        assert applied and max(applied.values()) == 1, [i for i, n in applied.items() if n > 1]
        assert len(applied) >= events - 8  # the killed worker may take a few last lines with it (4 threads)

        # The database is the sandbox corp: each contact once, one welcome decision per scan.
        assert _scalar(engine, "SELECT count(*) FROM customers") >= CUSTOMERS
        assert _scalar(engine, "SELECT count(*) FROM follow_relations") == CUSTOMERS
        assert _scalar(engine, "SELECT count(*) FROM welcome_sends") == CUSTOMERS
        codes = Counter(m.get("welcome_code") for m in sandbox.welcome_messages)
        assert not [c for c, n in codes.items() if n > 1], "a welcome went out twice"
        for chat in corp["chats"]:
            want = set(sandbox.groups[chat].member_ids())
            got = {r[0] for r in _rows(engine, "SELECT member_id FROM group_members WHERE chat_id = :c "
                                               "AND state = 'member'", c=chat)}
            assert got == want, chat
        assert _scalar(engine, "SELECT count(*) FROM tags WHERE name LIKE '扩容标签%'") == 3

        # The active scheduler plans the new groups and fires; the standby one never does.
        wait_until(lambda: _scalar(engine, "SELECT count(*) FROM sop_posts WHERE channel = 'mass_send' "
                                           "AND status = 'sent'") == len(OWNERS) * BOT_CAP,
                   timeout=120, interval=0.5, what="every group's mass send to be sent")
    finally:
        procs.stop_all()
        server.stop()
        client.close()

    per_group = _rows(engine, "SELECT chat_id, day, count(*), count(mass_seq) FROM sop_posts "
                              "WHERE audience = 'group' GROUP BY chat_id, day")
    assert per_group and all(n <= 3 and mass <= 1 for _, _, n, mass in per_group), per_group
    assert {n for _, _, n, _ in per_group} == {3}  # four wanted, three kept
    per_bot = _rows(engine, "SELECT sender, day, count(DISTINCT chat_id) FROM sop_posts GROUP BY sender, day")
    assert {sender for sender, _, _ in per_bot} == set(OWNERS)  # today and the day planned ahead
    assert {n for _, _, n in per_bot} == {BOT_CAP}, per_bot
    sent_to = Counter(r["chat_id"] for t in sandbox.templates.values() if t.chat_type == "group"
                      for rs in t.results.values() for r in rs)
    assert sent_to and max(sent_to.values()) == 1, "a group got two mass sends"
    assert set(sent_to) == {r[0] for r in _rows(engine, "SELECT chat_id FROM sop_posts WHERE channel = 'mass_send' "
                                                       "AND status = 'sent'")}
    engine.dispose()

"""The rebuild queue against the real Redis (127.0.0.1:6379, a key prefix per test): new messages
mark customers, a burst is one scheduled job, the job rebuilds what was marked, a failed rebuild
puts the ids back, and Redis down never fails the caller (a warning; the nightly pass catches up).

Mutations tried: the notifier re-raising RelayerQueueUnavailable (the Redis-down test failed);
drain_crm not putting ids back on failure (the failing-rules test: nothing pending)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis
from sqlmodel import SQLModel
from structlog.testing import capture_logs

from scrm.config import Settings
from scrm.crm.jobs import drain_crm, run_nightly_rebuild
from scrm.crm.queue import crm_notifier, crm_queue
from scrm.db import make_engine
from tests.crm.builders import NOW, RULES_DIR, followups, insert, local, msg


@pytest.fixture
def r():
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the tests need Redis on 127.0.0.1:6379")
    yield client
    client.close()


@pytest.fixture
def prefix(r):
    p = f"test:crm:{uuid.uuid4().hex[:10]}"
    yield p
    r.delete(f"{p}:dirty", f"{p}:scheduled")


@pytest.fixture
def db(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    SQLModel.metadata.create_all(eng)
    yield eng
    eng.dispose()


def app_settings(rules_dir=RULES_DIR) -> Settings:
    s = Settings()
    s.crm.rules_dir = rules_dir
    s.crm.debounce_seconds = 3
    s.crm.rebuild_batch = 2
    s.sop.timezone = "Asia/Shanghai"
    return s


def test_a_burst_of_new_messages_is_one_job_that_rebuilds_them(r, prefix, db):
    settings = app_settings()
    scheduled: list[int] = []
    mark = crm_notifier(r, settings, schedule=scheduled.append, key_prefix=prefix)
    t0 = local(2026, 11, 23, 10)
    for i in range(3):
        insert(db, [msg(f"c{i}", t0 + dt.timedelta(minutes=i), "拿铁多少钱？")])
        mark([f"c{i}", "", f"c{i}"])
    assert scheduled == [3000]
    report = drain_crm(db, r, settings, now=NOW, schedule=scheduled.append, key_prefix=prefix)
    assert report.customers == 2 and scheduled == [3000, 0]  # 3 marked, batch of 2: the rest at once
    report = drain_crm(db, r, settings, now=NOW, schedule=scheduled.append, key_prefix=prefix)
    assert report.customers == 1
    assert all(len(followups(db, f"c{i}")) == 1 for i in range(3))
    assert drain_crm(db, r, settings, now=NOW, schedule=scheduled.append, key_prefix=prefix).customers == 0


def test_a_failed_rebuild_puts_the_ids_back(r, prefix, db, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "rules.yaml").write_text("facts: [\n", encoding="utf-8")
    settings = app_settings(bad)
    insert(db, [msg("c1", NOW, "在吗")])
    crm_notifier(r, settings, schedule=lambda ms: None, key_prefix=prefix)(["c1"])
    with pytest.raises(Exception, match="rules"):
        drain_crm(db, r, settings, now=NOW, schedule=lambda ms: None, key_prefix=prefix)
    assert crm_queue(r, settings, lambda ms: None, key_prefix=prefix).pending() == 1


def test_redis_down_is_a_warning_and_the_nightly_rebuild_catches_up(db):
    settings = app_settings()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    insert(db, [msg("c1", NOW, "在吗")])
    with capture_logs() as logs:
        crm_notifier(dead, settings, schedule=lambda ms: None)(["c1"])  # no exception: the import goes on
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["crm_mark_skipped"]
    assert followups(db, "c1") == []
    report = run_nightly_rebuild(db, settings, now=NOW)
    assert report.customers == 1 and len(followups(db, "c1")) == 1


def test_a_broker_refusing_the_job_is_a_warning_too(r, prefix):
    def refuse(delay_ms: int) -> None:
        raise ConnectionError("broker down")

    with capture_logs() as logs:
        crm_notifier(r, app_settings(), schedule=refuse, key_prefix=prefix)(["c1"])
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["crm_mark_skipped"]
    assert r.scard(f"{prefix}:dirty") == 1  # marked: the next mark schedules (the flag was cleared)
    assert not r.exists(f"{prefix}:scheduled")

"""The worker's crm_rebuild_dirty actor as a worker runs it (settings from the environment, real
Redis, SQLite): it rebuilds the marked customers; with rules that do not load it logs one warning
and leaves the marks waiting instead of failing and retrying. Mutation tried: the rules check
removed from the actor (the RulesError escaped, so dramatiq would retry five times with tracebacks)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from scrm.config import reset_settings_cache
from scrm.crm.models import FollowUp
from scrm.crm.queue import KEY_PREFIX
from scrm.db import dispose_engines, make_engine, migrate
from tests.crm.builders import RULES_DIR, insert, local, msg
from tests.crm.conftest import add_sample_people
from workers import actors


@pytest.fixture
def worker_env(tmp_path, monkeypatch, redis_url):
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("SCRM_REDIS__URL", redis_url)
    monkeypatch.setenv("SCRM_CRM__RULES_DIR", str(RULES_DIR))
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    add_sample_people(engine)
    import redis

    r = redis.Redis.from_url(redis_url)
    r.delete(f"{KEY_PREFIX}:dirty", f"{KEY_PREFIX}:scheduled")
    yield engine, r
    r.delete(f"{KEY_PREFIX}:dirty", f"{KEY_PREFIX}:scheduled")
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


def records(engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(FollowUp.__table__.select()).all())


def test_the_actor_rebuilds_the_marked_customers(worker_env):
    engine, r = worker_env
    insert(engine, [msg("wmCrmSampleLiuYang0001", local(2026, 11, 9, 10), "你好，团购价多少钱一杯？")])
    r.sadd(f"{KEY_PREFIX}:dirty", "wmCrmSampleLiuYang0001")
    actors.crm_rebuild_dirty.fn()
    assert records(engine) == 1 and r.scard(f"{KEY_PREFIX}:dirty") == 0


def test_refused_rules_leave_the_marks_waiting_with_one_warning(worker_env, tmp_path, monkeypatch):
    engine, r = worker_env
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rules.yaml").write_text("facts: [\n")
    monkeypatch.setenv("SCRM_CRM__RULES_DIR", str(broken))
    reset_settings_cache()
    insert(engine, [msg("wmCrmSampleLiuYang0001", local(2026, 11, 9, 10), "你好")])
    r.sadd(f"{KEY_PREFIX}:dirty", "wmCrmSampleLiuYang0001")
    with capture_logs() as logs:
        actors.crm_rebuild_dirty.fn()  # returns: nothing for dramatiq to retry
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["crm_rules_refused"]
    assert r.smembers(f"{KEY_PREFIX}:dirty") == {b"wmCrmSampleLiuYang0001"} and records(engine) == 0

"""The nightly CRM job (real Redis, SQLite and PostgreSQL): it rebuilds only the customers whose
records can change, except after the rules or the builder's settings changed, when it rebuilds
everyone (a new default next step reaches a quiet customer). With Redis down it rebuilds everyone
rather than risk stale records. Mutations tried: the fingerprint ignoring the rule files (the
quiet customer kept the old next step); only a missing fingerprint counted (the test failed)."""

from __future__ import annotations

import shutil

import pytest
import redis as redis_lib

from scrm.config import Settings
from scrm.crm.jobs import FINGERPRINT_KEY, run_nightly_rebuild
from tests.crm.builders import NOW, RULES_DIR, followups, insert, local, msg

QUIET = "wmNightlyQuiet0001"


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    client.delete(FINGERPRINT_KEY)
    yield client
    client.delete(FINGERPRINT_KEY)


def test_a_rules_change_rebuilds_everyone_once_then_only_changes(engine, r, tmp_path):
    rules = tmp_path / "crm"
    shutil.copytree(RULES_DIR, rules, ignore=shutil.ignore_patterns("samples", "*.md"))
    settings = Settings(crm={"rules_dir": rules})
    # A quiet customer whose record ends with our reply: the default next step applies.
    insert(engine, [msg(QUIET, local(2026, 11, 20, 10), "你好"),
                    msg(QUIET, local(2026, 11, 20, 10, 5), "您好，欢迎光临", out=True, userid="sales_zhang")])

    first = run_nightly_rebuild(engine, settings, now=NOW, redis=r)
    assert first.customers == 1 and r.get(FINGERPRINT_KEY)
    assert followups(engine, QUIET)[0].next_step == "保持联系，下次有新品或活动时告知客户"

    quiet = run_nightly_rebuild(engine, settings, now=NOW, redis=r)
    assert quiet.customers == 0 and quiet.skipped == 1, "nothing changed: nobody is read"

    text = (rules / "rules.yaml").read_text(encoding="utf-8")
    (rules / "rules.yaml").write_text(text.replace("保持联系，下次有新品或活动时告知客户", "每月回访一次"),
                                      encoding="utf-8")
    changed = run_nightly_rebuild(engine, settings, now=NOW, redis=r)
    assert changed.customers == 1 and followups(engine, QUIET)[0].next_step == "每月回访一次"
    assert run_nightly_rebuild(engine, settings, now=NOW, redis=r).customers == 0

    gap = Settings(crm={"rules_dir": rules, "session_gap_hours": 4})  # a builder setting counts too
    assert run_nightly_rebuild(engine, gap, now=NOW, redis=r).customers == 1


def test_without_redis_everyone_is_rebuilt(engine, tmp_path):
    settings = Settings(crm={"rules_dir": RULES_DIR})
    insert(engine, [msg(QUIET, local(2026, 11, 20, 10), "你好")])
    run_nightly_rebuild(engine, settings, now=NOW)
    down = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    again = run_nightly_rebuild(engine, settings, now=NOW, redis=down)  # a warning, no exception
    assert again.customers == 1

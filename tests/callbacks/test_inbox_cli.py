"""`scrm inbox`: the counts, the failed and stuck rows with their errors, and re-driving rows, on
a database with done, failed and pending rows made by the real pipeline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, select
from typer.testing import CliRunner

from scrm.callbacks.inbox import inbox_report
from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.config import reset_settings_cache
from scrm.contacts.models import Customer, FollowRelation
from scrm.db import dispose_engines, utcnow
from scrm.wecom.errors import WeComAPIError
from tests.pipeline_harness import harness
from tests.waiting import run_threads

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
T = CallbackInbox.__table__


def rows(engine, model=CallbackInbox, *where):
    with Session(engine) as s:
        return list(s.exec(select(model).where(*where).order_by(*model.__table__.primary_key.columns)))


def inbox_row(engine, inbox_id) -> CallbackInbox:
    [row] = rows(engine, CallbackInbox, CallbackInbox.id == inbox_id)
    return row


@pytest.fixture
def env(engine, redis_url, tmp_path, monkeypatch):
    """The pipeline with 2 done rows, 1 failed (WeCom kept answering 48002), 1 pending for 25
    minutes (stuck) and 1 pending just now; the CLI pointed at the same database and Redis."""
    url = engine.url.render_as_string(hide_password=False)
    for key, value in {"SCRM_DATABASE__URL": url, "SCRM_REDIS__URL": redis_url, "SCRM_DATA_DIR": str(tmp_path),
                       "COLUMNS": "250"}.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        sb.add_member("zhangsan", "张三")
        h.way = h.client.add_contact_way(type=1, scene=2, state="st:BJ001:1", user=["zhangsan"])["config_id"]
        h.broker.flush_all()  # this test applies rows by hand until it starts the worker
        for name in ("顾客甲", "顾客乙"):
            sb.scan_contact_way(h.way, name=name, welcome_code=False)
        for row in rows(engine):
            h.processor.process(row.id)
        h.processor.max_attempts = 3
        sb.inject_fault("externalcontact/get", 48002, times=3)
        h.failed_eid = sb.scan_contact_way(h.way, name="顾客丙", welcome_code=False)["external_userid"]
        h.failed_id = rows(engine)[-1].id
        for _ in range(3):
            with pytest.raises(WeComAPIError):
                h.processor.process(h.failed_id)
        sb.scan_contact_way(h.way, name="顾客丁", welcome_code=False)
        sb.scan_contact_way(h.way, name="顾客戊", welcome_code=False)
        h.stuck_id, h.fresh_id = [r.id for r in rows(engine)][-2:]
        with engine.begin() as conn:
            conn.execute(update(T).where(T.c.id == h.stuck_id).values(received_at=utcnow() - timedelta(minutes=25)))
        h.broker.flush_all()  # the pending rows' messages were lost (as in a Redis outage)
        from scrm.cli import app

        h.run = lambda *args: CliRunner().invoke(app, ["inbox", *args])
        yield h
    dispose_engines()
    reset_settings_cache()


def test_the_report_shows_counts_failed_and_stuck_rows_with_their_errors(env):
    """Tried: counting failed rows as done, and dropping the stuck list, each fail here."""
    result = env.run()
    assert result.exit_code == 0, result.output
    out = result.output
    assert "inbox: 5 rows: 2 pending, 2 done, 1 failed" in out
    by_event = out.split("by event")[1].split("failed (")[0].strip().splitlines()
    assert [line.split() for line in by_event] == [
        ["event", "change_type", "pending", "done", "failed", "total"],
        ["change_external_contact", "add_external_contact", "2", "2", "1", "5"]]
    failed_section = out.split("failed (gave up after max attempts): 1")[1].split("stuck")[0]
    assert f"{env.failed_id}  change_external_contact  add_external_contact         3" in failed_section
    assert "WeCom externalcontact/get errcode=48002 errmsg=injected fault" in failed_section
    stuck_section = out.split("stuck (pending for more than 10m): 1")[1].split("done with a note")[0]
    assert f"{env.stuck_id}  change_external_contact" in stuck_section and "(25m ago)" in stuck_section
    assert f"\n  {env.fresh_id}  " not in stuck_section  # pending 0 s: not stuck

    # A shorter threshold makes the fresh row stuck too; --limit shows one and says how many more.
    out = env.run("--stuck-after", "0s", "--limit", "1").output
    assert "stuck (pending for more than 0s): 2" in out and "… 1 more (--offset 1 --limit 1" in out
    bad = env.run("--stuck-after", "ten minutes")
    assert bad.exit_code == 2 and "is not a duration" in bad.output


def test_redrive_moves_the_failed_row_to_pending_and_it_is_applied_exactly_once(env):
    """Tried: a re-drive that only enqueued (status left failed) is never applied; a claim made
    unconditional (the status check dropped from dispatch's UPDATE and its early return)
    applied the row several times here (attempts > 1)."""
    h = env
    h.sandbox.faults.clear()  # WeCom answers again
    result = h.run("redrive", str(h.failed_id))
    assert result.exit_code == 0, result.output
    assert "re-drove 1 row" in result.output and "queued" in result.output
    row = inbox_row(h.engine, h.failed_id)
    assert (row.status, row.attempts) == (InboxStatus.pending, 0)
    assert h.redis.llen("dramatiq:callbacks") == 1  # on the queue

    # Redelivery races: 8 threads apply it by hand while the queued message waits for a worker.
    run_threads([lambda: h.processor.process(h.failed_id)] * 8)
    h.start_worker()
    h.drain()
    row = inbox_row(h.engine, h.failed_id)
    assert (row.status, row.attempts, row.last_error) == (InboxStatus.done, 1, None)
    assert len(rows(h.engine, Customer, Customer.external_userid == h.failed_eid)) == 1
    assert len(rows(h.engine, FollowRelation, FollowRelation.external_userid == h.failed_eid)) == 1
    # The other rows were not touched by the re-drive.
    assert inbox_row(h.engine, h.stuck_id).status == InboxStatus.pending


def test_redrive_refuses_unknown_ids_and_done_rows_and_changes_nothing(env):
    h = env
    done_id = rows(h.engine)[0].id
    unknown = h.run("redrive", str(h.failed_id), "9999")
    assert unknown.exit_code == 2 and "no inbox row with id 9999" in unknown.output
    done = h.run("redrive", str(done_id), str(h.failed_id))
    assert done.exit_code == 2 and f"inbox row {done_id} is done" in done.output and "--include-done" in done.output
    nothing = h.run("redrive")
    assert nothing.exit_code == 2 and "inbox ids, or --failed" in nothing.output
    assert inbox_row(h.engine, h.failed_id).status == InboxStatus.failed  # nothing changed
    assert inbox_row(h.engine, done_id).status == InboxStatus.done
    assert h.redis.llen("dramatiq:callbacks") == 0


def test_redrive_failed_and_include_done(env):
    """--failed takes every failed row; --include-done applies a done row again, once."""
    h = env
    h.sandbox.faults.clear()
    done_id = rows(h.engine)[0].id
    result = h.run("redrive", "--failed", "--include-done", str(done_id), str(h.stuck_id))
    assert result.exit_code == 0, result.output
    assert "re-drove 3 rows" in result.output
    h.start_worker()
    h.drain()
    for inbox_id in (done_id, h.failed_id, h.stuck_id):
        row = inbox_row(h.engine, inbox_id)
        assert (row.status, row.attempts) == (InboxStatus.done, 1), inbox_id
    assert inbox_report(h.engine).by_status == {"pending": 1, "done": 4, "failed": 0}


def test_redrive_with_redis_down_leaves_the_rows_pending_for_the_relay(env, monkeypatch):
    from scrm.callbacks import inbox_cli

    def down(ids):
        raise ConnectionError("redis down")

    monkeypatch.setattr(inbox_cli, "_send_to_queue", down)
    result = env.run("redrive", "--failed")
    assert result.exit_code == 0 and "not queued" in result.output and "relay" in result.output
    row = inbox_row(env.engine, env.failed_id)
    assert (row.status, row.attempts, row.enqueued_at) == (InboxStatus.pending, 0, None)

"""``/t/{code}`` through the write-behind: the redirect queues the click in Redis, the flush writes
and counts it, outages of either side lose nothing (except when both are away: logged).

Real Redis throughout (this is what production uses), SQLite and PostgreSQL for the database.
Each test's docstring names the mutation tried on the code to see it fail.
"""

from __future__ import annotations

import datetime as dt
import socket
import time

import pytest
import redis as redis_lib
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

import scrm.clicks.flush as flush_module
from scrm.clicks.agents import AgentClass, AgentReason
from scrm.clicks.flush import flush_clicks
from scrm.clicks.queue import QUEUE_KEY, ClickRecord, encode_record
from scrm.clicks.recording import click_queue_redis
from scrm.clicks.secret import customer_link
from scrm.db import as_utc
from tests.clicks.clicktools import (
    ANDROID_WECHAT,
    SECRET,
    T0,
    URLS,
    WECHAT,
    SimClock,
    click,
    flush,
    link,
    make_client,
    queued,
    row_count,
    rows,
    seed_links,
)
from tests.waiting import run_threads

H = dt.timedelta(hours=1)


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def _down_redis() -> redis_lib.Redis:
    """A client for a port nobody listens on: every command fails with ConnectionError."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return click_queue_redis(f"redis://127.0.0.1:{port}/0")


def _failing_writes(engine):
    """The database goes away in the middle of the transaction: the last write before the commit
    (the link counters) fails, after the click rows and the state were written."""
    def boom(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE TRACKED_LINKS"):
            raise OperationalError(statement, parameters, Exception("the database went away"))

    event.listen(engine, "before_cursor_execute", boom)
    return lambda: event.remove(engine, "before_cursor_execute", boom)


def test_a_click_redirects_and_reaches_the_database_only_through_the_flush(engine, r):
    """Tried: ``ClickRecorder.record`` writing the click itself (``write_clicks`` before the push):
    rows were in the database before any flush."""
    seed_links(engine)
    with make_client(engine, r, SimClock()) as web:
        resp = click(web, "/t/lk1")
    assert resp.status_code == 302 and resp.headers["location"] == URLS["lk1"]
    assert row_count(engine) == 0 and link(engine, "lk1").clicks == 0 and queued(r) == 1

    report = flush(engine, r)
    assert (report.taken, report.written, report.counted, report.error) == (1, 1, 1, None)
    [row] = rows(engine)
    assert (row.code, as_utc(row.clicked_at), row.agent, row.agent_reason, row.reason, row.counted,
            row.external_userid) == ("lk1", T0, "person", "wechat", "counted", True, None)
    assert row.visitor.startswith("a:") and len(row.event_id) == 32
    lk = link(engine, "lk1")
    assert (lk.clicks, lk.unique_clicks, as_utc(lk.first_clicked_at), as_utc(lk.last_clicked_at)) == (1, 1, T0, T0)
    assert queued(r) == 0
    assert flush(engine, r).taken == 0 and row_count(engine) == 1


def test_unique_clicks_are_counted_across_batches_and_flushes_and_machines_never_count(engine, r):
    """Two customers with tokens (A, B), one anonymous reader (C), a bot, a preview fetcher and a
    prefetch; written in batches of 2, then of 3 in a second flush a day later. The expected
    decisions are written out by hand from the rule (a window of 24 h from the last counted click).
    Tried: ``_load_state`` returning nothing (the stored state ignored): A's click 23 h later was
    counted; the prefetch hint ignored by the route (headers not passed): it counted."""
    seed_links(engine)
    clock = SimClock()
    exp = T0 + dt.timedelta(days=30)
    a = customer_link("http://scrm", "lk1", "wmCustomerA", SECRET, exp)[len("http://scrm"):]
    a2 = customer_link("http://scrm", "lk2", "wmCustomerA", SECRET, exp)[len("http://scrm"):]
    b = customer_link("http://scrm", "lk1", "wmCustomerB", SECRET, exp)[len("http://scrm"):]
    script: list[tuple[dt.timedelta, str, str, dict, str]] = [
        # (when, path, user agent, extra headers, expected reason)
        (0 * H, a, WECHAT, {}, "counted"),
        (1 * H, a, WECHAT, {}, "repeat"),
        (1 * H, a2, WECHAT, {}, "counted"),  # another link: its own count
        (2 * H, b, WECHAT, {}, "counted"),
        (2 * H, "/t/lk1", ANDROID_WECHAT, {}, "counted"),  # C, anonymous
        (3 * H, "/t/lk1", ANDROID_WECHAT, {}, "repeat"),
        (3 * H, "/t/lk1", "curl/8.4.0", {}, "not_a_person"),
        (3 * H, a, "WhatsApp/2.24.10.79 A", {}, "not_a_person"),  # a preview of A's link
        (3 * H, "/t/lk1", WECHAT, {"sec-purpose": "prefetch"}, "not_a_person"),
    ]
    later = [
        (23 * H, a, WECHAT, {}, "repeat"),  # 23 h after A's counted click: decided from the stored state
        (24 * H + 30 * dt.timedelta(minutes=1), a, WECHAT, {}, "counted"),
        (26 * H, b, WECHAT, {}, "counted"),
    ]
    with make_client(engine, r, clock) as web:
        for when, path, ua, headers, _ in script:
            clock.now = T0 + when
            assert click(web, path, ua, **headers).status_code == 302
        first = flush(engine, r, batch=2)
        assert (first.taken, first.batches, first.written) == (9, 5, 9)
        for when, path, ua, headers, _ in later:
            clock.now = T0 + when
            assert click(web, path, ua, **headers).status_code == 302
        second = flush(engine, r, batch=3)
    assert (second.taken, second.counted, second.repeats) == (3, 2, 1)

    got = sorted((as_utc(x.clicked_at) - T0, x.code, x.reason, x.counted, x.external_userid or "", x.agent)
                 for x in rows(engine))
    want = []
    for when, path, ua, _headers, reason in script + later:
        code = path.split("?")[0].rsplit("/", 1)[1]
        userid = {a: "wmCustomerA", a2: "wmCustomerA", b: "wmCustomerB"}.get(path, "")
        agent = "person" if reason != "not_a_person" else ("bot" if ua.startswith("curl") else "preview")
        want.append((when, code, reason, reason == "counted", userid, agent))
    assert got == sorted(want)
    lk1, lk2 = link(engine, "lk1"), link(engine, "lk2")
    assert (lk1.clicks, lk1.unique_clicks) == (8, 5)  # person clicks; counted ones
    assert (lk2.clicks, lk2.unique_clicks) == (1, 1)
    assert (as_utc(lk1.first_clicked_at), as_utc(lk1.last_clicked_at)) == (T0, T0 + 26 * H)


def test_a_customer_token_carries_the_customer_and_a_forged_one_does_not(engine, r):
    """Tried: the recorder queueing ``None`` for the external_userid: the customer was lost."""
    seed_links(engine)
    url = customer_link("http://scrm/", "lk1", "wmCustomerA", SECRET, T0 + dt.timedelta(days=7))
    assert url.startswith("http://scrm/t/lk1?c=v1.")
    forged = customer_link("http://scrm", "lk1", "wmCustomerA", "another-secret-of-enough-length", T0 + H)
    with make_client(engine, r, SimClock()) as web:
        assert click(web, url[len("http://scrm"):]).status_code == 302
        assert click(web, forged[len("http://scrm"):], ANDROID_WECHAT).status_code == 302
    report = flush(engine, r)
    assert report.refused_tokens == 1
    by_agent = {x.visitor[:2]: x for x in rows(engine)}
    assert (by_agent["c:"].external_userid, by_agent["c:"].visitor) == ("wmCustomerA", "c:wmCustomerA")
    assert by_agent["a:"].external_userid is None and by_agent["a:"].counted


def test_a_database_outage_during_a_flush_keeps_every_click_in_redis(engine, r):
    """The database fails at the last write before the commit: nothing is half-written, the
    clicks stay in Redis, the next flush writes each exactly once. Tried: deleting the processing
    list before the database write (``_done`` called first): the clicks were gone after the outage."""
    seed_links(engine)
    clock = SimClock()
    with make_client(engine, r, clock) as web:
        for i in range(5):
            clock.now = T0 + i * H
            click(web, "/t/lk1", f"{WECHAT} v{i}")
    restore = _failing_writes(engine)
    try:
        report = flush(engine, r, batch=2)
    finally:
        restore()
    assert report.error and "the database went away" in report.error and report.written == 0
    assert row_count(engine) == 0 and link(engine, "lk1").clicks == 0 and queued(r) == 5

    report = flush(engine, r, batch=2)
    assert (report.taken, report.written, report.error) == (5, 5, None)
    assert len({x.event_id for x in rows(engine)}) == row_count(engine) == 5
    assert (link(engine, "lk1").clicks, link(engine, "lk1").unique_clicks) == (5, 5)
    assert flush(engine, r).taken == 0 and row_count(engine) == 5


def test_a_flusher_that_dies_after_its_commit_does_not_make_the_next_one_write_twice(engine, r, monkeypatch):
    """The batch is committed but the flusher dies before clearing Redis: the next flush takes the
    same batch again and skips every stored event id. Tried: ``write_clicks`` without the
    stored-event-id check: the retried batch failed on the unique event_id and never cleared."""
    seed_links(engine)
    clock = SimClock()
    with make_client(engine, r, clock) as web:
        for i in range(3):
            clock.now = T0 + i * H
            click(web, "/t/lk1", f"{WECHAT} v{i}")
    monkeypatch.setattr(flush_module, "_done", lambda redis, batch: False)  # "died" after the commit
    assert flush_clicks(engine, r, window=24 * H, batch=10).written == 3
    assert queued(r) == 3
    monkeypatch.undo()
    again = flush(engine, r)
    assert (again.taken, again.already_written, again.written, again.error) == (3, 3, 0, None)
    assert row_count(engine) == 3 and (link(engine, "lk1").clicks, link(engine, "lk1").unique_clicks) == (3, 3)
    assert queued(r) == 0


def test_with_redis_down_the_click_is_written_directly_and_the_customer_redirected(engine):
    """Tried: no fallback (the RedisError re-raised): the customer got a 500 instead of the page;
    the queue's client built as ``Redis(host, port)`` (redis-py's default: 10 retries with backoff):
    the first redirect took 4 s."""
    seed_links(engine)
    clock = SimClock()
    with capture_logs() as logs, make_client(engine, _down_redis(), clock) as web:
        started = time.monotonic()
        resp = click(web, "/t/lk1")
        assert time.monotonic() - started < 2.0  # the customer does not wait for Redis to be retried
        clock.now = T0 + H
        again = click(web, "/t/lk1")
    assert resp.status_code == again.status_code == 302 and resp.headers["location"] == URLS["lk1"]
    assert [x.reason for x in rows(engine)] == ["counted", "repeat"]
    assert (link(engine, "lk1").clicks, link(engine, "lk1").unique_clicks) == (2, 1)
    warned = [e for e in logs if e["event"] == "click_queue_unavailable"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning" and warned[0]["code"] == "lk1"


def test_with_redis_and_the_database_down_the_customer_is_redirected_and_the_loss_logged(engine):
    """The link's URL is cached from an earlier click; then both stores fail. Tried: the direct
    write's database error not caught: a 500."""
    seed_links(engine)
    with capture_logs() as logs, make_client(engine, _down_redis(), SimClock()) as web:
        assert click(web, "/t/lk1").status_code == 302  # warms the URL cache (written directly)
        restore = _failing_writes(engine)
        try:
            resp = click(web, "/t/lk1", ANDROID_WECHAT)
        finally:
            restore()
    assert resp.status_code == 302 and resp.headers["location"] == URLS["lk1"]
    [lost] = [e for e in logs if e["event"] == "click_lost"]
    assert lost["log_level"] == "error" and lost["code"] == "lk1" and "event_id" in lost
    assert row_count(engine) == 1


def test_an_unknown_code_is_the_chinese_page_and_queues_nothing(engine, r):
    """Tried: no PageNotFound for a None URL (redirect to ``None``): the test saw a 302/500."""
    seed_links(engine)
    with make_client(engine, r, SimClock()) as web:
        for path in ("/t/nosuchcode", "/t/" + "x" * 25):
            resp = web.get(path, headers={"user-agent": WECHAT, "accept": "text/html"}, follow_redirects=False)
            assert resp.status_code == 404 and "这个活动链接已经失效" in resp.text
    assert queued(r) == 0


def test_two_flushers_at_once_write_every_click_once(engine, r):
    """Four flushers race over 600 queued clicks (50 customers, one click every 3 h for 33 h: each
    counts at 0 h and 24 h). Tried: without the Redis flush lock alone the test still passes (the
    flushers then share the processing list and the database decides); the lock removed together
    with ``_serialise`` (no advisory lock / BEGIN IMMEDIATE) failed it on SQLite, together with
    the stored-event-id check failed it on PostgreSQL."""
    seed_links(engine)
    for v in range(50):
        r.rpush(QUEUE_KEY, *[encode_record(ClickRecord(
            f"ev{v:03d}{k:02d}", "lk1", T0 + 3 * k * H, f"c:wm{v:03d}", AgentClass.PERSON, AgentReason.WECHAT,
            f"wm{v:03d}")) for k in range(12)])
    reports = run_threads([lambda: flush(engine, r, batch=25) for _ in range(4)])
    deadline = time.monotonic() + 30
    while queued(r) and time.monotonic() < deadline:  # a flusher that found the lock held stopped early
        reports.append(flush(engine, r, batch=25))
    assert sum(x.written for x in reports) == 600 and all(x.error is None for x in reports)
    assert row_count(engine) == len({x.event_id for x in rows(engine)}) == 600
    assert sum(x.counted for x in rows(engine)) == 100
    assert (link(engine, "lk1").clicks, link(engine, "lk1").unique_clicks) == (600, 100)


def test_a_flusher_whose_lock_expired_mid_write_does_not_double_write(engine, r):
    """Each commit is slow (0.3 s) and the flush lock lasts 0.05 s, so a second flusher takes over
    the batch the first is still writing: the database serialises them and the second finds the
    event ids stored. Tried: no ``_serialise`` (no advisory lock / BEGIN IMMEDIATE): the counters
    were incremented by both (or one failed on the unique event_id and the test saw the error)."""
    seed_links(engine)
    r.rpush(QUEUE_KEY, *[encode_record(ClickRecord(
        f"ev{v:03d}", "lk1", T0 + v * dt.timedelta(seconds=1), f"c:wm{v:03d}", AgentClass.PERSON,
        AgentReason.WECHAT)) for v in range(40)])

    def slow(conn):
        time.sleep(0.3)

    event.listen(engine, "commit", slow)

    def flusher():
        out = []
        deadline = time.monotonic() + 30
        while queued(r) and time.monotonic() < deadline:
            out.append(flush_clicks(engine, r, window=24 * H, batch=40, lock_seconds=0.05))
            time.sleep(0.01)
        return out

    try:
        results = run_threads([flusher, flusher])
    finally:
        event.remove(engine, "commit", slow)
    reports = [x for out in results for x in out]
    assert sum(x.written for x in reports) == 40
    assert row_count(engine) == 40 and sum(x.counted for x in rows(engine)) == 40
    assert (link(engine, "lk1").clicks, link(engine, "lk1").unique_clicks) == (40, 40)
    assert queued(r) == 0


def test_a_flusher_that_lost_its_lock_moves_nothing(r):
    """The batch move checks the lock inside the same atomic step: a flusher whose lock expired
    and was taken by another moves nothing out of the queue. Tried: the lock check removed from
    the move's script → the records were moved to the processing list under the other's lock."""
    from scrm.clicks.queue import LOCK_KEY, PROCESSING_KEY

    r.rpush(QUEUE_KEY, *[encode_record(ClickRecord(f"{k:032x}", "lk1", T0, "a:x", AgentClass.PERSON,
                                                   AgentReason.WECHAT)) for k in range(3)])
    r.set(LOCK_KEY, b"someone-else")
    with pytest.raises(flush_module._LockLost):
        flush_module._take(r, b"mine", 10)
    assert (r.llen(QUEUE_KEY), r.llen(PROCESSING_KEY)) == (3, 0)
    r.set(LOCK_KEY, b"mine")
    raws, leftover = flush_module._take(r, b"mine", 2)
    assert (len(raws), leftover, r.llen(QUEUE_KEY), r.llen(PROCESSING_KEY)) == (2, False, 1, 2)
    assert flush_module._take(r, b"mine", 2) == (raws, True)  # the leftover first, unchanged

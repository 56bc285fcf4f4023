"""The queue's records: a click survives the trip through Redis exactly, and an element that is
not a click record is dropped (logged) instead of blocking the queue for ever.

Mutations tried: the token refusal not decoded (always None) → the round trip failed (the time
through a float of seconds survived: a float holds today's microseconds); a ``BadRecord``
re-raised by the flush → the good clicks behind the bad element were never written."""

from __future__ import annotations

import datetime as dt

import redis as redis_lib
from structlog.testing import capture_logs

from scrm.clicks.agents import AgentClass, AgentReason
from scrm.clicks.queue import QUEUE_KEY, ClickRecord, decode_record, encode_record
from scrm.clicks.visitor import TokenRefusal
from tests.clicks.clicktools import flush, queued, row_count, seed_links


def test_a_record_round_trips_exactly():
    at = dt.datetime(2026, 11, 30, 2, 0, 0, 999_999, tzinfo=dt.UTC)
    for rec in (ClickRecord("e" * 32, "lk1", at, "c:wm客户", AgentClass.PERSON, AgentReason.WECHAT, "wm客户"),
                ClickRecord("e2", "lk1", at, "a:" + "f" * 32, AgentClass.BOT, AgentReason.HTTP_LIBRARY, None,
                            TokenRefusal.FORGED)):
        assert decode_record(encode_record(rec).encode()) == rec


def test_an_element_that_is_not_a_click_is_dropped_and_the_rest_written(engine, redis_url):
    seed_links(engine)
    r = redis_lib.Redis.from_url(redis_url)
    at = dt.datetime(2026, 11, 30, 2, tzinfo=dt.UTC)
    good = [encode_record(ClickRecord(f"ev{i}", "lk1", at, f"c:wm{i}", AgentClass.PERSON, AgentReason.WECHAT))
            for i in range(3)]
    r.rpush(QUEUE_KEY, good[0], b"not json", '[1,"x"]', good[1], good[2])
    with capture_logs() as logs:
        report = flush(engine, r)
    assert (report.taken, report.malformed, report.written, report.error) == (5, 2, 3, None)
    assert row_count(engine) == 3 and queued(r) == 0
    assert [e["log_level"] for e in logs if e["event"] == "click_record_dropped"] == ["error", "error"]
    r.close()

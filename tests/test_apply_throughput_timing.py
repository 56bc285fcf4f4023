"""The callback worker says where each event's time went: ``callback_applied`` carries
``wecom_ms`` (WeCom's round trips), ``db_ms`` (the database), ``total_ms`` and ``queued_ms`` (how
long the message waited in the queue since it was enqueued). An operator reading a slow worker's
log tells WeCom, PostgreSQL and a backlog apart from these.

Mutations checked: Cost.__exit__ adding every interval to ``db`` (wecom_ms 0) failed the first
test; the actor calling ``process(inbox_id)`` without ``queued_ms`` failed the second.
"""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage
from sqlmodel import Session

from scrm.callbacks import dispatch
from scrm.callbacks.dispatch import Processor
from scrm.callbacks.models import CallbackInbox
from scrm.wecom.events import TAG, dedup_key, render_event
from tests.recording_log import RecordingLog
from tests.waiting import wait_until

WECOM_WAIT = 0.08


class SlowWeCom:
    """WeCom answering the tag library after a round trip of WECOM_WAIT seconds."""

    def get_corp_tags(self):
        time.sleep(WECOM_WAIT)
        return [{"group_id": "g1", "group_name": "门店", "tag": [{"id": "t1", "name": "国贸店"}]}]


def tag_row(engine) -> int:
    xml = render_event("wwcorp", TAG, "update", int(time.time()), Id="t1", TagType="tag")
    with Session(engine) as s:
        row = CallbackInbox(dedup_key=dedup_key(xml), corp_id="wwcorp", event=TAG, change_type="update",
                            plaintext=xml)
        s.add(row)
        s.commit()
        assert row.id is not None
        return row.id


def test_callback_applied_splits_the_events_time_into_wecom_database_and_queue(sqlite_engine, monkeypatch):
    records = RecordingLog()
    monkeypatch.setattr(dispatch, "log", records)
    inbox_id = tag_row(sqlite_engine)
    Processor(sqlite_engine, SlowWeCom()).process(inbox_id, queued_ms=1234.5)
    [fields] = [f for _, event, f in records.records if event == "callback_applied"]
    assert fields["inbox_id"] == inbox_id
    assert WECOM_WAIT * 1000 <= fields["wecom_ms"] < WECOM_WAIT * 1000 + 200  # the round trip, not the writes
    assert 0 < fields["db_ms"] < fields["total_ms"]
    assert fields["wecom_ms"] + fields["db_ms"] <= fields["total_ms"] + 0.2
    assert fields["queued_ms"] == 1234.5


def test_the_worker_logs_how_long_the_message_waited_in_the_queue(monkeypatch):
    from workers import actors

    seen: list[float | None] = []

    class Recorder:
        def process(self, inbox_id, *, queued_ms=None):
            seen.append(queued_ms)

    broker = StubBroker(middleware=[CurrentMessage()])
    broker.emit_after("process_boot")
    previous = actors.process_callback.broker
    actors.process_callback.broker = broker
    broker.declare_actor(actors.process_callback)
    actors.set_processor(Recorder())  # type: ignore[arg-type]
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        message = actors.process_callback.message(7).copy(message_timestamp=int(time.time() * 1000) - 3000)
        broker.enqueue(message)
        wait_until(lambda: seen, timeout=10, what="the message was processed")
    finally:
        worker.stop()
        actors.set_processor(None)
        actors.process_callback.broker = previous
    assert seen[0] is not None and 3000 <= seen[0] < 13_000  # enqueued 3 s before it was taken


def test_outside_a_worker_there_is_no_queue_wait():
    from workers.actors import queued_ms

    assert queued_ms() is None

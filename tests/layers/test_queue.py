"""The debounce between events and the re-layer, against the real Redis (127.0.0.1:6379, a key
prefix per test): a burst of marks is one scheduled job; a drain takes a batch and schedules the
next while ids remain; a mark after a drain schedules again; Redis down is a clear error; and the
worker's drain_relayer re-layers what was marked (and puts the ids back when the pass fails)."""

from __future__ import annotations

import uuid

import pytest
import redis

from scrm.config import Settings
from scrm.layers.jobs import drain_relayer, run_full_pass
from scrm.layers.queue import RelayerQueue, RelayerQueueUnavailable
from tests.layers.conftest import NOW, STANDARD, load, ruleset, stored
from tests.layers.oracle import World


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
    p = f"test:layers:{uuid.uuid4().hex[:10]}"
    yield p
    r.delete(f"{p}:dirty", f"{p}:scheduled")


def test_a_burst_of_marks_is_one_job(r, prefix):
    """Mutation tried: ``set(..., nx=True)`` without nx (failed: a job per mark)."""
    calls: list[int] = []
    q = RelayerQueue(r, calls.append, debounce_seconds=5, key_prefix=prefix)
    for i in range(50):
        q.mark([f"c{i}", f"c{i + 1}", "", f"c{i}"])
    assert calls == [5000]
    assert q.pending() == 51


def test_drain_takes_a_batch_and_schedules_the_rest_at_once(r, prefix):
    """Mutations tried: the flag not cleared by drain (failed: the mark after the last drain
    scheduled nothing); no re-schedule when ids remain (failed: calls stayed at one)."""
    calls: list[int] = []
    q = RelayerQueue(r, calls.append, debounce_seconds=2, key_prefix=prefix)
    q.mark([f"c{i}" for i in range(25)])
    seen: list[str] = []
    first = q.drain(10)
    assert len(first) == 10 and calls == [2000, 0]  # the rest: a drain right away
    seen += first
    seen += q.drain(10)
    seen += q.drain(10)
    assert sorted(seen) == sorted(f"c{i}" for i in range(25))
    assert calls == [2000, 0, 0] and q.pending() == 0
    assert q.drain(10) == []
    q.mark(["late"])
    assert calls[-1] == 2000  # a quiet queue debounces again


def test_a_failed_schedule_does_not_block_the_next_mark(r, prefix):
    """The flag is dropped when scheduling fails, so the next event schedules (the ids stay)."""
    calls: list[int] = []

    def flaky(delay_ms: int) -> None:
        if not calls:
            calls.append(-1)
            raise RuntimeError("broker down")
        calls.append(delay_ms)

    q = RelayerQueue(r, flaky, debounce_seconds=1, key_prefix=prefix)
    with pytest.raises(RuntimeError, match="broker down"):  # the broker's own error, as it came
        q.mark(["a"])
    q.mark(["b"])
    assert calls == [-1, 1000] and q.pending() == 2


def test_redis_down_is_a_clear_error():
    """Mutation tried: mark without the RedisError translation (failed: a bare ConnectionError)."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    q = RelayerQueue(dead, lambda ms: None, debounce_seconds=1, key_prefix="test:dead")
    with pytest.raises(RelayerQueueUnavailable, match="could not mark 2 customers"):
        q.mark(["a", "b"])


def _world() -> World:
    w = World()
    for e in ("a", "b", "c"):
        w.customers[e] = "active"
        w.follows.append((len(w.follows) + 1, f"u{e}", e, None, "active", NOW))
    w.orders.append(("a", NOW, 100, 0))
    return w


def test_the_worker_drain_relayers_what_was_marked(sqlite_engine, r, prefix, monkeypatch):
    """drain_relayer with the queue's default prefix replaced: marked a and b are placed, c (not
    marked) is not; the full-pass job places c too."""
    load(sqlite_engine, _world())
    settings = Settings()
    monkeypatch.setattr("scrm.layers.jobs.RelayerQueue",
                        lambda redis, schedule, **kw: RelayerQueue(redis, schedule, **{**kw, "key_prefix": prefix}))
    q = RelayerQueue(r, lambda ms: None, debounce_seconds=0, key_prefix=prefix)
    q.mark(["a", "b"])
    report = drain_relayer(sqlite_engine, r, settings, now=NOW, ruleset=ruleset(STANDARD), schedule=lambda ms: None)
    assert report.customers == 2
    assert {e: v[0] for e, v in stored(sqlite_engine).items()} == {"a": "first", "b": "new"}
    run_full_pass(sqlite_engine, settings, now=NOW, ruleset=ruleset(STANDARD))
    assert set(stored(sqlite_engine)) == {"a", "b", "c"}


def test_a_failed_pass_puts_the_ids_back(sqlite_engine, r, prefix, monkeypatch):
    """Mutation tried: drain_relayer without the ``queue.mark(ids)`` on failure (failed: pending 0)."""
    settings = Settings()
    monkeypatch.setattr("scrm.layers.jobs.RelayerQueue",
                        lambda redis, schedule, **kw: RelayerQueue(redis, schedule, **{**kw, "key_prefix": prefix}))

    def broken(*a, **kw):
        raise RuntimeError("database gone")

    monkeypatch.setattr("scrm.layers.jobs.relayer_customers", broken)
    q = RelayerQueue(r, lambda ms: None, debounce_seconds=0, key_prefix=prefix)
    q.mark(["a", "b"])
    with pytest.raises(RuntimeError, match="database gone"):
        drain_relayer(sqlite_engine, r, settings, now=NOW, ruleset=ruleset(STANDARD), schedule=lambda ms: None)
    assert q.pending() == 2

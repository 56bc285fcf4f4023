"""WeCom's limits on tagging (reference §3.3, §3.10, §3.11): mark_tag calls stay within
``layers.mark_tag_per_minute`` in every rolling minute (a fake clock, never real waiting), 45009
after the client's backoff stops the run, and WeCom's refusals are clear.

Each test names the mutation that was tried to see it fail."""

from __future__ import annotations

import pytest
import redis as redis_lib

from scrm.config import Settings
from scrm.layers.tagsync import LocalRateLimiter, RedisRateLimiter, mark_tag_limiter
from scrm.wecom.errors import NotExternalContact, WeComAPIError
from tests.tags.world import MARK, World

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


class FakeTime:
    """A clock the limiter sleeps on: sleeping moves time forward, nothing waits."""

    def __init__(self, t: float = 1_000.0):
        self.t = t
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.t += seconds
        self.slept += seconds


def max_in_any_minute(times: list[float]) -> int:
    """The oracle: the most calls in any window (t - 60 s, t] (independent of the limiters)."""
    return max((sum(1 for u in times if t - 60 < u <= t) for t in times), default=0)


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_the_limiter_keeps_calls_per_minute_under_the_setting(kind, redis_url):
    """Mutations tried: a call exactly 60 s old still counted (``<`` for ``<=`` in LocalRateLimiter,
    an exclusive bound in the Redis script's ZREMRANGEBYSCORE): both fail."""
    fake = FakeTime()
    r = redis_lib.Redis.from_url(redis_url)
    limiter = (LocalRateLimiter(10, clock=fake, sleep=fake.sleep) if kind == "local"
               else RedisRateLimiter(r, 10, key="test:tagsync", clock=fake, sleep=fake.sleep))
    times = []
    fake.t = 1_055.0  # a burst just before a minute boundary, then more right after
    for _ in range(35):
        limiter.acquire()
        times.append(fake.t)
    assert max_in_any_minute(times) == 10
    assert times[9] == 1_055.0 and times[10] == pytest.approx(1_115.0)  # the 11th waits a full minute
    assert fake.slept == pytest.approx(180.0)  # 35 calls at 10/min: 3 minutes of waiting, no more
    r.close()


def test_two_processes_share_the_redis_budget(redis_url):
    """Two limiters (two processes) on one Redis key: together still 10 a minute.
    Mutation tried: a per-instance key (20 a minute together: fails)."""
    fake = FakeTime()
    r = redis_lib.Redis.from_url(redis_url)
    a = RedisRateLimiter(r, 10, key="test:shared", clock=fake, sleep=fake.sleep)
    b = RedisRateLimiter(r, 10, key="test:shared", clock=fake, sleep=fake.sleep)
    times = []
    for i in range(30):
        (a if i % 2 else b).acquire()
        times.append(fake.t)
    assert max_in_any_minute(times) == 10
    r.close()


def test_the_limiter_falls_back_to_this_process_when_redis_is_down():
    """Redis down: the per-process budget still holds, and Redis is asked again only after
    ``retry_after``. Mutation tried: no cool-down (every call tries Redis: 12 attempts, fails)."""
    fake = FakeTime()
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=None)
    attempts = []
    limiter = RedisRateLimiter(dead, 5, clock=fake, sleep=fake.sleep, retry_after=90)
    real = limiter._script
    limiter._script = lambda **kw: (attempts.append(fake.t), real(**kw))[1]
    times = []
    for _ in range(12):
        limiter.acquire()
        times.append(fake.t)
    assert max_in_any_minute(times) == 5
    assert len(attempts) == 2  # at the start and once the 90 s cool-down was over


def test_the_limiter_from_settings(redis_url):
    settings = Settings(layers={"mark_tag_per_minute": 600})
    assert isinstance(mark_tag_limiter(settings, redis_lib.Redis.from_url(redis_url)), RedisRateLimiter)
    local = mark_tag_limiter(settings, None, processes=4)
    assert isinstance(local, LocalRateLimiter) and local.per_minute == 150


def test_a_sync_keeps_mark_tag_calls_within_the_limit(sqlite_engine, clock):
    """25 customers at 10 mark_tag a minute, timed by the sandbox's clock as WeCom would see them.
    Mutation tried: acquiring the limiter only for a run's first call (25 calls in one minute: fails)."""
    world = World(sqlite_engine, clock)
    for i in range(25):
        world.customer(f"客{i}")
    seen: list[float] = []
    real = world.sandbox.api_mark_tag

    def timed(body):
        seen.append(clock.t)
        return real(body)

    world.sandbox.api_mark_tag = timed
    limiter = LocalRateLimiter(10, clock=clock, sleep=world.advance)
    report = world.sync(rate=limiter)
    assert report.calls == 25 == len(seen) and report.cleaned == 25
    assert max_in_any_minute(seen) == 10
    assert report.waited == pytest.approx(120.0)


def test_45009_after_the_clients_backoff_stops_the_run_and_leaves_the_rest_dirty(sqlite_engine, clock):
    """The client retries 45009 with backoff (3 tries here); still refused: the run stops.
    Mutation tried: RateLimited taken as one relation's failure and the run carried on (more
    calls into the limit: fails)."""
    world = World(sqlite_engine, clock)
    ids = [world.customer(f"客{i}") for i in range(3)]
    world.sync(limit=0)  # nothing taken
    world.sandbox.inject_fault(MARK, 45009, times=4)
    report = world.sync()
    assert report.stopped and "45009" in report.stopped and report.calls == 1
    assert world.calls() == 4  # the first try and the client's 3 backoff retries, nothing after
    assert all(world.dirty(e) for e in ids)
    again = world.sync()
    assert again.cleaned == 3 and not any(world.dirty(e) for e in ids)


def test_45033_once_is_absorbed_by_the_clients_backoff(sqlite_engine, clock):
    world = World(sqlite_engine, clock)
    a = world.customer("阿青")
    world.sandbox.inject_fault(MARK, 45033, times=1)
    report = world.sync()
    assert report.calls == 1 and not report.failures and not world.dirty(a)
    assert world.calls() == 2


def test_mark_tag_refusals_are_clear(sqlite_engine, clock):
    """The sandbox refuses like WeCom: an unknown tag (40068), both lists empty (40058; the client
    refuses before calling), a relation that does not exist (84061), an unknown member (60111).
    Mutation tried in the sandbox: skipping the tag check in api_mark_tag (40068 not raised: fails)."""
    world = World(sqlite_engine, clock)
    a = world.customer("阿青")
    world.sync()
    tag = world.tag_id("分层·新客")
    c = world.client
    with pytest.raises(WeComAPIError) as exc:
        c.mark_tag("zhangsan", a, add=["etNOSUCHTAG"])
    assert exc.value.errcode == 40068
    with pytest.raises(WeComAPIError) as exc:
        c.mark_tag("zhangsan", a, add=[world.group().group_id])  # a group id is not a tag
    assert exc.value.errcode == 40068
    with pytest.raises(ValueError, match="add or remove"):
        c.mark_tag("zhangsan", a)
    token = world.sandbox.handle("GET", "gettoken", {"corpid": world.sandbox.corp_id,
                                                     "corpsecret": world.sandbox.secret}, None)["access_token"]
    raw = world.sandbox.handle("POST", MARK, {"access_token": token},
                               {"userid": "zhangsan", "external_userid": a, "add_tag": [], "remove_tag": []})
    assert raw["errcode"] == 40058
    with pytest.raises(NotExternalContact):
        c.mark_tag("lisi", a, add=[tag])
    with pytest.raises(WeComAPIError) as exc:
        c.mark_tag("ghost", a, add=[tag])
    assert exc.value.errcode == 60111
    # Nothing half-applied by a refused call.
    assert world.wecom_tags(a) == {"分层·新客", "门店·国贸店", "区域·北京"}


def test_a_refused_mark_tag_reads_clearly_in_the_report(sqlite_engine, clock):
    """What an operator reads: who, which tags, WeCom's code and message. Mutation tried: the
    failure without tag names (describe() loses '+分层·首购': fails)."""
    world = World(sqlite_engine, clock)
    a = world.customer("阿青")
    world.sync()
    world.set_layer(a, "first")
    world.sandbox.inject_fault(MARK, 48002, times=1)
    report = world.sync()
    (failure,) = report.failures
    text = failure.describe()
    assert text.startswith(f"mark_tag zhangsan -> {a} (")
    assert "+分层·首购" in text and "-分层·新客" in text and "errcode 48002" in text
    assert "1 left dirty" in report.summary()

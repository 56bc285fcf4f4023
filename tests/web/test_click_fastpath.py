"""The raw-ASGI fast path of ``/t/{code}`` (:mod:`scrm.web.click_fastpath`): it answers cached
codes without FastAPI, and what it queues and answers is what the FastAPI route would have.

The first request of a code goes through the route (it fills the link cache); the same request
again is answered by the fast path; the two queued records are compared field by field. Each
test names the mutation tried on the code to see it fail.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import redis as redis_lib
from sqlmodel import Session

from scrm.clicks.queue import QUEUE_KEY, decode_record
from scrm.clicks.secret import customer_link
from scrm.sop.models import TrackedLink
from tests.clicks.clicktools import SECRET, T0, WECHAT, SimClock, click, make_client, seed_links

ODD_URL = "https://m.example.com/活动/早餐 券?from=sop&x=a b#top"


@pytest.fixture
def r(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


class CountingApi:
    """Counts the requests that reach FastAPI (behind the fast path)."""

    def __init__(self, api):
        self.api, self.paths = api, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.api(scope, receive, send)


def _spied(web) -> CountingApi:
    fast = web.app.rest
    spy = CountingApi(fast.api)
    fast.api = spy
    return spy


def _pop(r) -> list:
    raw = r.lrange(QUEUE_KEY, 0, -1)
    r.delete(QUEUE_KEY)
    return [decode_record(x) for x in raw]


def _same_but_id(a, b) -> None:
    assert (a.code, a.at, a.visitor, a.agent, a.agent_reason, a.external_userid, a.token_refusal) == (
        b.code, b.at, b.visitor, b.agent, b.agent_reason, b.external_userid, b.token_refusal)
    assert a.event_id != b.event_id


def test_a_cached_code_skips_fastapi_and_queues_what_the_route_queued(engine, r):
    """Tried: ``ClickFastPath`` passing everything to FastAPI → the second request reached it;
    the fast path taking the client address from X-Forwarded-For → the visitor keys differed;
    the query string not read → the customer's token was lost."""
    seed_links(engine)
    exp = T0 + dt.timedelta(days=30)
    path = customer_link("http://scrm", "lk1", "wmCustomerA", SECRET, exp)[len("http://scrm"):]
    with make_client(engine, r, SimClock()) as web:
        spy = _spied(web)
        cases = [
            (path, WECHAT, {}),  # a customer's token
            ("/t/lk2", WECHAT, {"x-forwarded-for": "8.8.8.8"}),  # not a proxy uvicorn trusts here
            ("/t/lk2", WECHAT, {"sec-purpose": "prefetch"}),  # a prefetch: not a person
            ("/t/lk2?c=forged.token", WECHAT, {}),  # a refused token
            ("/t/lk2", "curl/8.4.0", {}),
        ]
        for p, ua, headers in cases:
            first = click(web, p, ua, **headers)
            second = click(web, p, ua, **headers)
            assert first.status_code == second.status_code == 302
            assert first.headers["location"] == second.headers["location"]
            assert second.headers["content-length"] == "0"
            a, b = _pop(r)
            _same_but_id(a, b)
        assert spy.paths == ["/t/lk1", "/t/lk2"]  # only the first sight of each code
    assert b.agent == "bot"


def test_head_is_a_bot_and_a_quoted_location_matches_the_route(engine, r):
    """Tried: the fast path passing "GET" as the method → the HEAD click was a person; the
    Location not quoted → non-ASCII characters went out raw (and differed from the route's)."""
    with Session(engine) as s:
        s.add(TrackedLink(code="odd1", post_id=300, position=0, chat_id="wrChat1", template_id="t",
                          day=dt.date(2026, 11, 30), url=ODD_URL))
        s.commit()
    with make_client(engine, r, SimClock()) as web:
        spy = _spied(web)
        route = web.head("/t/odd1", headers={"user-agent": WECHAT}, follow_redirects=False)
        fast = web.head("/t/odd1", headers={"user-agent": WECHAT}, follow_redirects=False)
        assert route.status_code == fast.status_code == 302
        assert fast.headers["location"] == route.headers["location"]
        assert fast.headers["location"].isascii() and "%E6%B4%BB" in fast.headers["location"]
        assert spy.paths == ["/t/odd1"]
        a, b = _pop(r)
    _same_but_id(a, b)
    assert (b.agent, b.agent_reason) == ("bot", "head_request")


def test_unknown_codes_other_paths_and_methods_still_reach_the_route(engine, r):
    """Tried: the fast path answering every ``/t/`` path from the cache (no check that the cache holds a URL)
    → the unknown code got a 500 instead of the Chinese page."""
    seed_links(engine)
    with make_client(engine, r, SimClock()) as web:
        spy = _spied(web)
        for _ in range(2):
            gone = web.get("/t/nosuch", headers={"accept": "text/html"}, follow_redirects=False)
            assert gone.status_code == 404 and "这个活动链接已经失效" in gone.text
        assert web.post("/t/lk1").status_code == 405
        assert web.get("/t/lk1/extra", follow_redirects=False).status_code == 404
    assert spy.paths == ["/t/nosuch", "/t/nosuch", "/t/lk1", "/t/lk1/extra"]
    assert r.llen(QUEUE_KEY) == 0


def test_a_failed_push_on_the_fast_path_writes_the_click_and_redirects(engine, r, monkeypatch):
    """Redis fails between the cache hit and the push: the click goes to the database in a worker
    thread and the customer is redirected; the next click goes to the route (Redis backing off).
    Tried: dropping the record ``queue`` returned → no row in the database."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from tests.clicks.clicktools import row_count

    seed_links(engine)
    with make_client(engine, r, SimClock()) as web:
        spy = _spied(web)
        assert click(web, "/t/lk1").status_code == 302  # the route: the cache is filled
        assert row_count(engine) == 0

        def down(*a, **k):
            raise RedisConnectionError("gone")

        monkeypatch.setattr(web.app.rest.clicks.redis, "rpush", down)
        resp = click(web, "/t/lk1")
        assert resp.status_code == 302 and spy.paths == ["/t/lk1"]  # answered by the fast path
        assert row_count(engine) == 1
        assert click(web, "/t/lk1").status_code == 302
        assert spy.paths == ["/t/lk1", "/t/lk1"]  # backing off: the route, which writes directly
        assert row_count(engine) == 2


def test_concurrent_redirects_share_pushes_and_each_waits_for_its_click(engine, r):
    """64 requests at once on one event loop: every click is in Redis when its redirect goes out,
    and they went in fewer RPUSHes than requests (group commit). Tried: the hand-over to the next
    leader removed (``_leading`` left True) → the requests after the first group hung (timeout);
    each request pushing alone (no grouping) → 64 pushes; the redirect sent before awaiting the
    push → redirects went out with their clicks not yet queued."""
    import asyncio
    import time

    from scrm.clicks.recording import ClickRecorder
    from scrm.web.click_fastpath import ClickFastPath

    rec = ClickRecorder(engine, r, secret=SECRET, tz=ZoneInfo("Asia/Shanghai"), clock=SimClock())
    rec.links._entries["lk1"] = ("https://m.example.com/a", time.monotonic() + 3600)
    pushes: list[int] = []
    real = rec.push

    def counting(elements, *, code):
        pushes.append(len(elements))
        time.sleep(0.01)  # a slow Redis: the others pile up behind the push in flight
        return real(elements, code=code)

    rec.push = counting  # type: ignore[method-assign]
    fast = ClickFastPath(None, rec)
    queued_at_answer: list[int] = []

    async def one(k: int) -> None:
        scope = {"type": "http", "method": "GET", "path": "/t/lk1", "query_string": b"",
                 "client": (f"117.136.{k}.7", 4000), "headers": [(b"user-agent", WECHAT.encode())]}
        sent: list[dict] = []

        async def send(message):
            if message["type"] == "http.response.start":
                queued_at_answer.append(r.llen(QUEUE_KEY))
            sent.append(message)

        await fast(scope, None, send)
        assert sent[0]["status"] == 302

    async def main():
        await asyncio.wait_for(asyncio.gather(*[one(k) for k in range(64)]), timeout=20)

    asyncio.run(main())
    assert sum(pushes) == 64 == r.llen(QUEUE_KEY) and len(pushes) < 64
    visitors = {x.visitor for x in _pop(r)}
    assert len(visitors) == 64  # 64 networks: 64 distinct clicks, none lost or doubled
    # the k-th redirect out: at least k clicks were in Redis (each its own, pushed before it)
    assert all(n >= k + 1 for k, n in enumerate(queued_at_answer))

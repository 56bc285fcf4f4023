"""The in-process cache of code → URL in front of ``/t/``: the database is asked once per code per
TTL, an unknown code is asked again soon (a link made after a miss is found), a failing database
is a clear ``LinkLookupFailed``, and random codes cannot grow it without bound.

Mutations tried: entries never expiring (``hit[1] > now`` replaced by ``True``) → the link made
after a miss stayed unknown; the size cap removed → ``len(cache._entries)`` grew past it."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from scrm.clicks.recording import LinkCache, LinkLookupFailed


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_database_is_asked_once_per_ttl_and_a_miss_is_retried_soon():
    links: dict[str, str] = {"lk1": "https://m.example.com/a"}
    asked: list[str] = []
    clock = Clock()

    def lookup(code: str) -> str | None:
        asked.append(code)
        return links.get(code)

    cache = LinkCache(lookup, ttl=60, miss_ttl=5, monotonic=clock)
    assert [cache.url("lk1") for _ in range(3)] == ["https://m.example.com/a"] * 3 and asked == ["lk1"]
    assert cache.url("new") is None
    links["new"] = "https://m.example.com/b"
    clock.t = 4.9
    assert cache.url("new") is None  # still the cached miss
    clock.t = 5.1
    assert cache.url("new") == "https://m.example.com/b"
    clock.t = 61
    assert cache.url("lk1") == "https://m.example.com/a" and asked.count("lk1") == 2


def test_a_failing_database_is_a_clear_error_and_random_codes_are_bounded():
    def down(code: str) -> str | None:
        raise OperationalError("SELECT", {}, Exception("gone"))

    with pytest.raises(LinkLookupFailed):
        LinkCache(down).url("lk1")
    cache = LinkCache(lambda code: None, max_size=100)
    for i in range(1000):
        cache.url(f"scan{i}")
    assert len(cache._entries) <= 100

"""WeComClient's bound on concurrent calls to one API path (``wecom.max_in_flight_per_api``):
WeCom answers 45033 when an app has too many calls to one API in flight, so a worker with many
threads must queue the extra calls in the process rather than send them and be refused.

Mutation checked: with the ``with self._slots(path):`` line removed from ``_send`` the first test
saw 12 calls in flight at once (bound 3) and failed; with the bound applied to every path together
(one semaphore for the client) the second test failed (3 in flight in all, not 3 per path).
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from scrm.wecom.client import WeComClient
from tests.waiting import run_threads


class Gauge:
    """A fake WeCom that holds each call a moment and records the most calls in flight at once,
    per API path and in all."""

    def __init__(self, hold: float = 0.05):
        self.hold = hold
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_now = self.total_peak = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/cgi-bin/")
        if path == "gettoken":
            return httpx.Response(200, json={"errcode": 0, "access_token": "tok", "expires_in": 7200})
        with self.lock:
            self.now[path] = self.now.get(path, 0) + 1
            self.peak[path] = max(self.peak.get(path, 0), self.now[path])
            self.total_now += 1
            self.total_peak = max(self.total_peak, self.total_now)
        time.sleep(self.hold)
        with self.lock:
            self.now[path] -= 1
            self.total_now -= 1
        if path.endswith("groupchat/get"):
            chat_id = json.loads(request.content)["chat_id"]
            return httpx.Response(200, json={"errcode": 0, "group_chat": {"chat_id": chat_id}})
        return httpx.Response(200, json={"errcode": 0, "tag_group": []})


def client(gauge: Gauge, bound: int) -> WeComClient:
    http = httpx.Client(transport=httpx.MockTransport(gauge))
    return WeComClient("wwcorp", "secret", "http://wecom/cgi-bin/", http=http, max_in_flight_per_api=bound)


def test_calls_to_one_api_beyond_the_bound_wait_their_turn_and_all_are_answered():
    gauge = Gauge()
    c = client(gauge, bound=3)
    c.access_token()
    answers: list[str] = []
    run_threads([lambda i=i: answers.append(c.get_group_chat(f"wr{i}")["chat_id"]) for i in range(12)])
    assert sorted(answers) == sorted(f"wr{i}" for i in range(12))  # nothing lost, nothing refused
    assert gauge.peak["externalcontact/groupchat/get"] == 3  # overlapped up to the bound, never beyond


def test_the_bound_is_per_api_so_one_busy_api_does_not_hold_up_another():
    gauge = Gauge()
    c = client(gauge, bound=3)
    c.access_token()
    jobs = [lambda i=i: c.get_group_chat(f"wr{i}") for i in range(6)] + [c.get_corp_tags for _ in range(6)]
    run_threads(jobs)
    assert gauge.peak["externalcontact/groupchat/get"] <= 3
    assert gauge.peak["externalcontact/get_corp_tag_list"] <= 3
    assert gauge.total_peak > 3  # the two APIs were in flight together


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError, match="max_in_flight_per_api"):
        WeComClient("wwcorp", "secret", "http://wecom/cgi-bin/", max_in_flight_per_api=0)


def test_the_setting_reaches_the_client():
    from scrm.config import Settings

    settings = Settings(wecom={"secret": "s", "max_in_flight_per_api": 7})
    assert WeComClient.from_settings(settings).max_in_flight_per_api == 7

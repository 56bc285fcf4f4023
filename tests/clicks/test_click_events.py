"""A /t/ request turned into counting facts: agent, visitor, customer; bad input never raises.

Mutations tried (each made a test here fail, then was undone):
- the ``BadAddress`` fallback removed → ``test_an_address_that_is_not_an_ip_still_gives_a_key`` raised;
- a refused token still used as the customer (returned ``customer_visitor_key(token)`` in the
  refusal branch) → ``test_a_refused_token_falls_back_to_the_anonymous_key_and_says_why``;
- the verdict computed from a fixed WeChat user agent instead of the request's →
  ``test_a_preview_of_a_one_to_one_link_keeps_the_customer_but_never_counts``.
"""

from __future__ import annotations

import datetime as dt

from scrm.clicks.agents import AgentClass, AgentReason
from scrm.clicks.counting import CountReason, count_clicks
from scrm.clicks.events import click_facts
from scrm.clicks.visitor import TokenRefusal, anonymous_visitor_key, daily_salt, make_customer_token

SECRET = "a-click-secret-of-some-length"
NOW = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 30)
WECHAT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Mobile/15E148 MicroMessenger/8.0.49(0x18003129) NetType/4G Language/zh_CN")


def facts(**kw):
    args = dict(secret=SECRET, user_agent=WECHAT, headers={}, method="GET", client_ip="117.136.12.7",
                token=None, now=NOW, day=DAY)
    args.update(kw)
    return click_facts(**args)


def test_a_customer_token_names_the_customer():
    token = make_customer_token(SECRET, "wmCustomer01", NOW + dt.timedelta(days=30))
    f = facts(token=token)
    assert (f.visitor, f.external_userid, f.token_refusal) == ("c:wmCustomer01", "wmCustomer01", None)
    assert f.verdict.reason is AgentReason.WECHAT


def test_a_refused_token_falls_back_to_the_anonymous_key_and_says_why():
    anon = anonymous_visitor_key("117.136.12.7", WECHAT, daily_salt(SECRET, DAY))
    expired = make_customer_token(SECRET, "wmCustomer01", NOW - dt.timedelta(seconds=1))
    forged = make_customer_token("some-other-secret-entirely", "wmCustomer01", NOW + dt.timedelta(days=1))
    for token, reason in ((expired, TokenRefusal.EXPIRED), (forged, TokenRefusal.FORGED),
                          ("garbage", TokenRefusal.MALFORMED)):
        f = facts(token=token)
        assert (f.visitor, f.external_userid, f.token_refusal) == (anon, None, reason)
    assert facts(token="").token_refusal is None


def test_an_address_that_is_not_an_ip_still_gives_a_key():
    for ip in ("testclient", None, ""):
        f = facts(client_ip=ip)
        assert f.visitor.startswith("a:") and not f.address_known
    assert facts(client_ip="testclient").visitor != facts(client_ip="testclient", user_agent="curl/8").visitor
    assert facts().address_known


def test_a_preview_of_a_one_to_one_link_keeps_the_customer_but_never_counts():
    token = make_customer_token(SECRET, "wmCustomer01", NOW + dt.timedelta(days=30))
    preview = facts(token=token, user_agent="WhatsApp/2.24.10.79 A")
    reader = facts(token=token, client_ip="223.104.1.9")
    assert preview.external_userid == reader.external_userid == "wmCustomer01"
    assert preview.verdict.agent is AgentClass.PREVIEW
    r = count_clicks([preview.event("e1", "k1", NOW), reader.event("e2", "k1", NOW + dt.timedelta(minutes=1))], {})
    assert [d.reason for d in r.decisions] == [CountReason.NOT_A_PERSON, CountReason.COUNTED]

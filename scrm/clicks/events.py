"""One request to ``/t/{code}`` turned into the facts counting needs: who fetched it (person,
preview, bot), the visitor key, and the customer when a valid token names one.

This is the only place the three rules meet, so ``/t/{code}`` stays a thin caller: it passes what
the request says and stores what comes back. Nothing here may fail the redirect on bad input: a
refused token falls back to the anonymous key (the refusal is returned for the log), and a client
address that is not an IP (a misconfigured proxy header, a test client) is keyed as the network
``unknown`` with the user agent. A preview fetcher following a 1:1 link keeps the customer on the
record but, being a preview, is never counted: WeChat unfurling a link sent to a customer is not
that customer clicking.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from scrm.clicks.agents import AgentVerdict, classify
from scrm.clicks.counting import ClickEvent
from scrm.clicks.visitor import (
    BadAddress,
    InvalidCustomerToken,
    TokenRefusal,
    anonymous_visitor_key,
    customer_visitor_key,
    daily_salt,
    read_customer_token,
)

UNKNOWN_NETWORK = "0.0.0.0"


@lru_cache(maxsize=4096)  # the same few user agents click all day; a verdict is immutable
def _classify_plain(user_agent: str | None, method: str) -> AgentVerdict:
    return classify(user_agent, None, method)  # stands for "no usable address": keyed with the user agent only


@dataclass(frozen=True)
class ClickFacts:
    verdict: AgentVerdict
    visitor: str
    external_userid: str | None
    token_refusal: TokenRefusal | None  # a token was given and refused: why (for the log)
    address_known: bool

    def event(self, event_id: str, code: str, at: dt.datetime) -> ClickEvent:
        return ClickEvent(event_id, code, at, self.visitor, self.verdict.agent)


def click_facts(*, secret: str | bytes, user_agent: str | None, headers: Mapping[str, str], method: str,
                client_ip: str | None, token: str | None, now: dt.datetime, day: dt.date) -> ClickFacts:
    """``day`` is the corp's local date of ``now`` (the anonymous key's salt changes with it)."""
    verdict = classify(user_agent, headers, method) if headers else _classify_plain(user_agent, method)
    refusal: TokenRefusal | None = None
    userid: str | None = None
    if token:
        try:
            userid = read_customer_token(secret, token, now).external_userid
        except InvalidCustomerToken as exc:
            refusal = exc.reason
    if userid is not None:
        return ClickFacts(verdict, customer_visitor_key(userid), userid, None, True)
    salt = daily_salt(secret, day)
    try:
        return ClickFacts(verdict, anonymous_visitor_key(client_ip or "", user_agent, salt), None, refusal, True)
    except BadAddress:
        return ClickFacts(verdict, anonymous_visitor_key(UNKNOWN_NETWORK, user_agent, salt), None, refusal, False)

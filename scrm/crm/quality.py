"""Service quality per rep and per store: first-response time, customer messages left unanswered
past ``crm.unanswered_after_minutes`` of business time, and replies with rude or risky phrases.

Contract (filled in by its owner): the pages render these shapes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class QualityRow:
    key: str  # a rep's userid, or a store code ("" = customers without a home store)
    name: str  # the rep's / store's name (falls back to the key)
    sessions: int  # follow-up sessions that started in the range with a customer message
    answered: int  # of them, answered by a rep
    median_first_response_seconds: float | None  # business seconds; None when nothing was answered
    mean_first_response_seconds: float | None
    customer_turns: int  # customer turns (consecutive customer messages) in the range
    unanswered: int  # turns not answered within the threshold (answered late, or still waiting past it)
    risky_replies: int


@dataclass(frozen=True)
class RiskyReply:
    message_id: int
    at: dt.datetime
    userid: str | None
    rep_name: str
    external_userid: str
    customer_name: str
    rule_id: str
    label: str  # the rule's Chinese label, e.g. 不礼貌 / 违规承诺
    phrase: str  # the text that matched
    excerpt: str


Dimension = Literal["rep", "store"]

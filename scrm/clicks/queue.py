"""The click queue in Redis: what ``/t/{code}`` pushes and the flush takes.

One click is one list element, a compact JSON array (version, event id, code, time in UTC
microseconds, visitor key, agent, agent reason, external_userid, token refusal), pushed with one
RPUSH. The flush moves up to a batch from ``QUEUE_KEY`` to ``PROCESSING_KEY`` atomically and
deletes the processing list only after the database committed, so a flusher that dies leaves
its batch where the next one finds it (see :mod:`scrm.clicks.flush`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from scrm.clicks.agents import AgentClass, AgentReason
from scrm.clicks.counting import ClickEvent
from scrm.clicks.visitor import TokenRefusal

QUEUE_KEY = "scrm:clicks:queue"
PROCESSING_KEY = "scrm:clicks:processing"
LOCK_KEY = "scrm:clicks:flush-lock"

_VERSION = 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BadRecord(ValueError):
    """A queue element that is not a click record (never written; logged and dropped)."""


@dataclass(frozen=True, slots=True)
class ClickRecord:
    event_id: str
    code: str
    at: dt.datetime  # aware UTC
    visitor: str
    agent: AgentClass
    agent_reason: AgentReason
    external_userid: str | None = None
    token_refusal: TokenRefusal | None = None

    def event(self) -> ClickEvent:
        return ClickEvent(self.event_id, self.code, self.at, self.visitor, self.agent)


def encode_click(event_id: str, code: str, at: dt.datetime, visitor: str, agent: str, agent_reason: str,
                 external_userid: str | None, token_refusal: str | None) -> str:
    """The queue element of one click (the request's hot path: no intermediate objects)."""
    micros = (at - _EPOCH) // _MICRO
    return _dumps([_VERSION, event_id, code, micros, visitor, agent, agent_reason, external_userid, token_refusal])


def encode_record(r: ClickRecord) -> str:
    return encode_click(r.event_id, r.code, r.at, r.visitor, r.agent, r.agent_reason, r.external_userid,
                        r.token_refusal)


def decode_record(raw: bytes | str) -> ClickRecord:
    """A queue element back as a record, or :class:`BadRecord` saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord("not JSON") from exc
    if not isinstance(data, list) or len(data) != 9 or data[0] != _VERSION:
        raise BadRecord("not a version 1 click record")
    _, event_id, code, micros, visitor, agent, reason, userid, refusal = data
    if not (isinstance(event_id, str) and 0 < len(event_id) <= 32 and isinstance(code, str) and 0 < len(code) <= 24
            and type(micros) is int and isinstance(visitor, str) and 0 < len(visitor) <= 160
            and (userid is None or (isinstance(userid, str) and len(userid) <= 128))):
        raise BadRecord("a field is missing or has the wrong type")
    try:
        return ClickRecord(event_id, code, _EPOCH + micros * _MICRO, visitor, AgentClass(agent),
                           AgentReason(reason), userid, None if refusal is None else TokenRefusal(refusal))
    except (ValueError, OverflowError) as exc:
        raise BadRecord(f"unknown value: {exc}") from exc

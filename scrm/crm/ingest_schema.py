"""A call or an SMS as a call centre / SMS gateway reports it: one pydantic shape for the CSV import
and ``POST /api/crm/records``, so both refuse the same things with the same reasons.

The mobile is normalised (:func:`scrm.orders.mobile.normalise_mobile`): ``+86 138 0013 8000``,
``8613800138000`` and ``138-0013-8000`` are one number. Times need a zone in the API; the CSV
import reads a time without one as local time (``sop.timezone``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from scrm.crm.models import Channel, Direction
from scrm.orders.mobile import normalise_mobile

SourceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^\S(.*\S)?$")]
DIRECTIONS = {"in": "in", "inbound": "in", "out": "out", "outbound": "out"}


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return value


def _direction(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in DIRECTIONS:
        return DIRECTIONS[value.strip().lower()]
    return value


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: SourceId = Field(description="the call's / message's id in its source system (idempotency key)")
    mobile: str = Field(description="the customer's mobile, any common spelling; stored as +86 and 11 digits")
    userid: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="the rep's WeCom userid (empty: not known)")
    direction: Literal["in", "out"] = Field(description="in: from the customer; out: from us (inbound/outbound too)")

    _blank = field_validator("userid", mode="before")(_blank_is_none)
    _dir = field_validator("direction", mode="before")(_direction)

    @field_validator("mobile")
    @classmethod
    def _mobile(cls, value: str) -> str:
        return normalise_mobile(value)


class CallIn(_Record):
    """A phone call between a rep and a customer."""

    channel: Literal["call"] = "call"
    started_at: AwareDatetime = Field(description="ISO-8601 with a zone, e.g. 2026-11-09T10:05:00+08:00")
    duration_seconds: Annotated[int, Field(ge=0, le=24 * 3600)] = Field(description="talk time; 0 when missed")
    status: Literal["answered", "missed"]
    summary: Annotated[str, Field(max_length=2000)] = Field(default="", description="the rep's note on the call")

    def content(self) -> str:
        """What a person reads in the timeline."""
        if self.status == "missed":
            head = "[未接来电]" if self.direction == "in" else "[未接通]"
        else:
            m, s = divmod(self.duration_seconds, 60)
            length = f"{m}分{s}秒" if m and s else f"{m}分钟" if m else f"{s}秒"
            head = f"[{'来电' if self.direction == 'in' else '去电'} {length}]"
        return f"{head} {self.summary}".rstrip()

    def row(self, external_userid: str | None, *, given_mobile: str, now: dt.datetime) -> dict[str, Any]:
        return _row(self, Channel.call, self.started_at, "call", self.content(),
                    {"status": self.status, "summary": self.summary, "given_mobile": given_mobile},
                    external_userid, self.duration_seconds, now)


class SmsIn(_Record):
    """A text message between a rep and a customer."""

    channel: Literal["sms"] = "sms"
    sent_at: AwareDatetime = Field(description="ISO-8601 with a zone")
    content: Annotated[str, Field(min_length=1, max_length=5000)]

    def row(self, external_userid: str | None, *, given_mobile: str, now: dt.datetime) -> dict[str, Any]:
        return _row(self, Channel.sms, self.sent_at, "sms", self.content, {"given_mobile": given_mobile},
                    external_userid, None, now)


def _row(rec: _Record, channel: Channel, at: dt.datetime, msgtype: str, content: str, payload: dict[str, Any],
         external_userid: str | None, duration: int | None, now: dt.datetime) -> dict[str, Any]:
    return {"channel": str(channel), "source_id": rec.id, "external_userid": external_userid, "mobile": rec.mobile,
            "userid": rec.userid, "direction": str(Direction(rec.direction)), "sent_at": at.astimezone(dt.UTC),
            "msgtype": msgtype, "content": content, "payload": payload, "roomid": None,
            "duration_seconds": duration, "revoked_at": None, "created_at": now}


RecordIn = Annotated[CallIn | SmsIn, Field(discriminator="channel")]
RECORD = TypeAdapter(RecordIn)
MAX_BATCH = 1000


class RecordsBatch(BaseModel):
    """The body of ``POST /api/crm/records``: calls and/or SMS, at most 1000. Each record is
    checked on its own (a bad one is answered as refused, the others are stored)."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class RecordsBatchDoc(BaseModel):
    """The same body as the API documents it (each record a call or an SMS)."""

    records: list[RecordIn] = Field(min_length=1, max_length=MAX_BATCH)


def problems(exc: Exception) -> str:
    """A validation error as one line: ``field: reason; field: reason``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("call", "sms")))
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)

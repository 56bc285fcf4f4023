"""The SOP template format: what operators write in ``sop_templates/*.yaml``.

One file is one template: which groups it targets, on which days, and its steps (one post each,
at a time of day, through a delivery channel). Unknown keys are errors, so a typo can't silently
turn a rule off. The planner reads these objects; rendering and lint live beside them.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from scrm.wecom.messages import MAX_ATTACHMENTS  # WeCom's limits live with the payload builders

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Channel(StrEnum):
    """How a post reaches the group (see issue 6)."""

    mass_send = "mass_send"  # add_msg_template, confirmed by the owner; ~1 a day per group
    owner_task = "owner_task"  # the owner sends it with one tap from the chat toolbar page
    group_robot = "group_robot"  # a group robot webhook, where the group has one


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def parse_clock(value: str) -> dt.time:
    """'8:00' / '08:00' -> time(8, 0); anything else is an error naming the value."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a time of day HH:MM (00:00-23:59)")
    return dt.time(int(m.group(1)), int(m.group(2)))


def parse_share(value: Any) -> float:
    """``'30%'`` or ``0.3`` -> 0.3: a share of a group's members, above 0 and at most 1. A bare
    number above 1 (``30``) is refused rather than guessed to mean 30%."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a share: write a percentage such as 30% or a fraction such as 0.3")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = Decimal(value.strip()[:-1].strip()) / 100
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a percentage such as 30%") from None
    elif isinstance(value, int | float | str):
        try:
            share = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a share: write a percentage such as 30% or a fraction such as "
                             "0.3") from None
    else:
        raise ValueError(f"{value!r} is not a share: write a percentage such as 30% or a fraction such as 0.3")
    if not share.is_finite():
        raise ValueError(f"{value!r} is not a share between 0% (excluded) and 100%")
    if share <= 0 or share > 1:
        hint = f" (did you mean {value}%?)" if share > 1 and not str(value).strip().endswith("%") else ""
        raise ValueError(f"{value!r} is not a share between 0% (excluded) and 100%{hint}")
    return float(share)


Share = Annotated[float, BeforeValidator(parse_share), WithJsonSchema({
    "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1},
              {"type": "string", "pattern": r"^\s*(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)\s*%\s*$"}],
    "description": "A share of the group's active customers: 30% or 0.3",
})]


class MemberLayers(_Strict):
    """Groups where at least ``at_least`` of the active customers (external members) are in
    ``layer`` (their customer layer, from ``customer_layers``)."""

    layer: str = Field(min_length=1, description="A layer id from the layer rules (layers/)")
    at_least: Share


class Targets(_Strict):
    """Which groups get the template. Lists are OR within a key and AND across keys; no
    positive key means every active group. Exclusions always win."""

    stores: list[str] = Field(default_factory=list, description="Store codes")
    cities: list[str] = Field(default_factory=list)
    group_tags: list[str] = Field(default_factory=list, description="Tags set on the group in scrm")
    layers: list[str] = Field(default_factory=list, description="Groups whose members' main layer is one of these")
    member_layers: list[MemberLayers] = Field(default_factory=list, description=(
        "Groups where at least a share of the active customers are in a layer (any item)"))
    chat_ids: list[str] = Field(default_factory=list)
    with_store: bool = Field(default=False, description="Only groups that belong to a store (templates "
                             "printing store fields: a group without a store never gets them anyway)")
    exclude_stores: list[str] = Field(default_factory=list)
    exclude_chat_ids: list[str] = Field(default_factory=list)


class Days(_Strict):
    """On which days the template runs: within [from, until], on the listed weekdays, plus the
    one-off dates. With only ``dates`` it runs on exactly those dates; with neither, every day."""

    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    dates: list[dt.date] = Field(default_factory=list, description="One-off dates (YYYY-MM-DD)")
    from_: dt.date | None = Field(default=None, alias="from")
    until: dt.date | None = None
    except_dates: list[dt.date] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _range(self) -> Days:
        if self.from_ and self.until and self.until < self.from_:
            raise ValueError(f"until ({self.until}) is before from ({self.from_})")
        return self

    def runs_on(self, day: dt.date) -> bool:
        if (self.from_ and day < self.from_) or (self.until and day > self.until) or day in self.except_dates:
            return False
        if day in self.dates:
            return True
        if self.weekdays is None:
            return not self.dates
        return WEEKDAYS[day.weekday()] in self.weekdays


class LinkCard(_Strict):
    title: str
    url: str = Field(description="Sent through a tracked link that counts clicks")
    desc: str = ""
    picurl: str = ""

    @field_validator("url", "picurl")
    @classmethod
    def _http(cls, v: str) -> str:
        if v and not re.match(r"^https?://", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class MiniProgramCard(_Strict):
    title: str
    appid: str = Field(pattern=r"^wx[0-9a-zA-Z]{16}$")
    page: str
    pic_media_id: str = ""


class ImageRef(_Strict):
    pic_url: str = ""
    media_id: str = ""

    @model_validator(mode="after")
    def _one(self) -> ImageRef:
        if bool(self.pic_url) == bool(self.media_id):
            raise ValueError("an image needs exactly one of pic_url or media_id")
        return self


class LinkAttachment(_Strict):
    link: LinkCard


class MiniProgramAttachment(_Strict):
    miniprogram: MiniProgramCard


class ImageAttachment(_Strict):
    image: ImageRef


Attachment = LinkAttachment | MiniProgramAttachment | ImageAttachment


class Step(_Strict):
    """One post: at a time of day, through a channel, with text and up to 9 attachments."""

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    at: str = Field(description="Time of day, HH:MM, in the corp's time zone")
    channel: Channel | None = Field(default=None, description="Default: sop.default_channel in config.yaml")
    priority: int | None = Field(default=None, ge=0, le=100, description="Default: the template's priority")
    text: str = ""
    attachments: list[Annotated[Attachment, Field(union_mode="left_to_right")]] = Field(default_factory=list)

    @field_validator("at")
    @classmethod
    def _clock(cls, v: str) -> str:
        return parse_clock(v).strftime("%H:%M")

    @field_validator("attachments")
    @classmethod
    def _max_attachments(cls, v: list) -> list:
        if len(v) > MAX_ATTACHMENTS:
            raise ValueError(f"{len(v)} attachments; WeCom allows at most {MAX_ATTACHMENTS}")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Step:
        if not self.text and not self.attachments:
            raise ValueError("a step needs text or at least one attachment")
        return self

    @property
    def clock(self) -> dt.time:
        return parse_clock(self.at)


class SopTemplate(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="Stable id; posts already planned refer to it")
    name: str
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=50, ge=0, le=100, description="Higher wins when a group's day is full")
    targets: Targets = Field(default_factory=Targets)
    days: Days = Field(default_factory=Days)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _step_ids(self) -> SopTemplate:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            key = step.id or str(i + 1)
            if key in seen:
                raise ValueError(f"two steps share the id {key!r}")
            seen.add(key)
        return self

    def step_key(self, index: int) -> str:
        return self.steps[index].id or str(index + 1)

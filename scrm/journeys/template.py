"""The layer journey format: what operators write in ``journeys/*.yaml``.

One file is one journey: when a customer moves into a layer (``trigger``), their owner sends them
one 1:1 message ``delay_days`` later at ``at``, if they are still in that layer then. The message
is written like an SOP step (``text`` and ``attachments``, the same shapes and limits), so the
same renderer, link tracking and channels carry it. Unknown keys are errors.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from scrm.sop.template import ID_PATTERN, Attachment, Channel, SopTemplate, Step, _Strict, parse_clock
from scrm.wecom.messages import MAX_ATTACHMENTS

LAYER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # scrm.layers.rules.ID_PATTERN
MAX_DELAY_DAYS = 365
JOURNEY_CHANNELS = (Channel.mass_send, Channel.owner_task)  # a 1:1 chat has no group robot


class Trigger(_Strict):
    """Which layer change starts the journey: a move into ``to_layer`` (from one of
    ``from_layers`` when given). A customer's first placement (no previous layer) starts it only
    with ``on_first_placement: true``, so the first full pass does not message everyone at once."""

    to_layer: str = Field(pattern=LAYER_PATTERN, description="The layer id the customer moved into")
    from_layers: list[Annotated[str, Field(pattern=LAYER_PATTERN)]] = Field(
        default_factory=list, description="Only moves from these layers (default: from any layer)")
    on_first_placement: bool = Field(default=False, description="Also a customer's first placement in to_layer")

    def matches(self, from_layer: str | None, to_layer: str) -> bool:
        if to_layer != self.to_layer:
            return False
        if from_layer is None:
            return self.on_first_placement
        return not self.from_layers or from_layer in self.from_layers


class Journey(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="Stable id; messages already planned refer to it")
    name: str = Field(description="Shown to owners on the toolbar page and in reminders")
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=50, ge=0, le=100,
                          description="Higher wins when two journeys want the same customer on the same day")
    trigger: Trigger
    delay_days: int = Field(default=0, ge=0, le=MAX_DELAY_DAYS,
                            description="Days after the change (local calendar days)")
    at: str = Field(description="Time of day, HH:MM, in the corp's time zone")
    channel: Channel = Field(description="mass_send (official 1:1 mass send, the owner confirms it in WeCom) "
                                         "or owner_task (the owner sends it from the 1:1 chat's toolbar)")
    text: str = ""
    attachments: list[Annotated[Attachment, Field(union_mode="left_to_right")]] = Field(default_factory=list)

    @field_validator("at")
    @classmethod
    def _clock(cls, v: str) -> str:
        return parse_clock(v).strftime("%H:%M")

    @field_validator("channel")
    @classmethod
    def _one_to_one(cls, v: Channel) -> Channel:
        if v not in JOURNEY_CHANNELS:
            raise ValueError(f"{v.value!r} cannot reach a 1:1 chat; use mass_send or owner_task")
        return v

    @field_validator("attachments")
    @classmethod
    def _max_attachments(cls, v: list) -> list:
        if len(v) > MAX_ATTACHMENTS:
            raise ValueError(f"{len(v)} attachments; WeCom allows at most {MAX_ATTACHMENTS}")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Journey:
        if not self.text and not self.attachments:
            raise ValueError("a journey needs text or at least one attachment")
        return self

    @property
    def clock(self) -> dt.time:
        return parse_clock(self.at)

    def step(self) -> Step:
        return Step(id="message", at=self.at, channel=self.channel, priority=self.priority, text=self.text,
                    attachments=self.attachments)

    def as_template(self) -> SopTemplate:
        """The journey as a one-step SOP template, the shape scrm.sop.render renders."""
        return SopTemplate(id=self.id, name=self.name, priority=self.priority, steps=[self.step()])

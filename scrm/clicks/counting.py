"""Which clicks count as unique clicks.

The rule: per link code and visitor, a person's click counts when that visitor has no counted click
on that code within the window before it (default 24 h); otherwise it is a repeat. The window runs
from the last *counted* click, not the last click, so someone opening the link every hour counts
once a day rather than once in all. Previews and bots (see :mod:`scrm.clicks.agents`) are recorded
with their decision but never count and never open a window. Clicks at the same instant are
ordered by ``event_id`` so the decision does not depend on arrival order.

``count_clicks`` is incremental: it takes a batch of raw events in any order plus the last counted
click per (code, visitor) already known, and returns a decision per event and the new state. Fed
the same history in consecutive batches it decides exactly as on the whole history at once,
provided the batches follow each other in time (no event of a later batch sorts before an event of
an earlier one) — which is what a write-behind queue drained in order gives, up to clock skew
between web processes. A click that arrives after a counted click of the same visitor and code
(skew, a redelivered event) is a repeat when within the window of it; one more than a window
older cannot be judged from the state alone and is marked ``late`` and not counted (an
undercount in a case that needs a day-late event, never a double count). A redelivered event is
therefore never counted twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from scrm.clicks.agents import AgentClass

DEFAULT_WINDOW = dt.timedelta(hours=24)

VisitKey = tuple[str, str]  # (code, visitor key)


class CountReason(StrEnum):
    COUNTED = "counted"
    REPEAT = "repeat"  # a counted click of this visitor on this code is less than a window before
    NOT_A_PERSON = "not_a_person"  # preview or bot: recorded, never counted
    LATE = "late"  # older than the known counted click by a window or more: cannot be judged


@dataclass(frozen=True)
class ClickEvent:
    event_id: str  # unique per click (the queue's id); breaks ties between equal times
    code: str
    at: dt.datetime  # aware
    visitor: str
    agent: AgentClass


@dataclass(frozen=True)
class ClickDecision:
    event: ClickEvent
    reason: CountReason
    counted_at: dt.datetime | None = None  # for a repeat or late click: the counted click it was judged by

    @property
    def counted(self) -> bool:
        return self.reason is CountReason.COUNTED


@dataclass(frozen=True)
class CountResult:
    decisions: list[ClickDecision]  # one per event, in the order the events were given
    last_counted: dict[VisitKey, dt.datetime]  # the whole new state
    changed: dict[VisitKey, dt.datetime]  # only the entries this batch moved (what to write back)


def count_clicks(events: Iterable[ClickEvent], last_counted: Mapping[VisitKey, dt.datetime],
                 window: dt.timedelta = DEFAULT_WINDOW) -> CountResult:
    """Decide a batch of clicks against the known state; the inputs are not modified."""
    if window <= dt.timedelta(0):
        raise ValueError("the unique-click window must be positive")
    batch = list(events)
    seen: set[str] = set()
    for e in batch:
        if e.at.tzinfo is None or e.at.utcoffset() is None:
            raise ValueError(f"click {e.event_id} has a naive time")
        if e.event_id in seen:
            raise ValueError(f"click {e.event_id} appears twice in the batch")
        seen.add(e.event_id)

    state = dict(last_counted)
    changed: dict[VisitKey, dt.datetime] = {}
    by_id: dict[str, ClickDecision] = {}
    for e in sorted(batch, key=lambda e: (e.at, e.event_id)):
        if e.agent is not AgentClass.PERSON:
            by_id[e.event_id] = ClickDecision(e, CountReason.NOT_A_PERSON)
            continue
        key = (e.code, e.visitor)
        last = state.get(key)
        if last is None or e.at - last >= window:
            state[key] = changed[key] = e.at
            by_id[e.event_id] = ClickDecision(e, CountReason.COUNTED)
        elif last - e.at < window:  # within the window after it, or (late) before it
            by_id[e.event_id] = ClickDecision(e, CountReason.REPEAT, last)
        else:
            by_id[e.event_id] = ClickDecision(e, CountReason.LATE, last)
    return CountResult([by_id[e.event_id] for e in batch], state, changed)

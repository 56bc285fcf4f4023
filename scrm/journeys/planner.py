"""The journey planner: journeys x layer changes x current layers x the ledger -> 1:1 messages.

Pure: data in, data out. The rules it keeps:
- a change starts a journey when the trigger matches it (``Trigger.matches``) and the journey is
  enabled;
- only a customer's latest change counts, and only while their current layer is still the
  change's ``to_layer``: a customer who left the layer (even if they came back later, through a
  newer change) is not messaged for the old change;
- the message is due on the local date of ``changed_at`` plus ``delay_days``, at ``at``; never in
  quiet hours; not when its window (:func:`scrm.sop.planner.window_end_seconds`) has already ended;
- never twice for the same change: a change with a row of that journey in the ledger (any day,
  any status) is skipped silently;
- at most one journey message per customer per day: a day that already has one in the ledger
  stays as it is; among new candidates the highest priority wins (then the earlier time, the
  journey id, the change id), and every loser is reported (``day_taken``), never lost silently;
- a customer with no owner (no active follow relation) gets nothing, reported (``no_owner``).

A message's ledger key is (customer, day, journey id, :func:`step_key`): the step key names the
change, so re-planning writes nothing new.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from scrm.journeys.template import Journey
from scrm.sop.planner import Limits, window_end_seconds

# Why a change's message was not planned.
LEFT_LAYER = "left_layer"  # a newer change, or the customer's layer is no longer to_layer
QUIET_HOURS = "quiet_hours"
TOO_LATE = "too_late"  # its window had ended when it was planned
NO_OWNER = "no_owner"
DAY_TAKEN = "day_taken"  # the customer already has a journey message that day (or a higher-priority one won)


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    external_userid: str
    from_layer: str | None
    to_layer: str
    changed_at: dt.datetime  # aware


@dataclass(frozen=True, slots=True)
class ExistingMessage:
    """A customer row of the ledger (``sop_posts`` with audience customer)."""

    external_userid: str
    day: dt.date
    journey_id: str
    step_key: str


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    external_userid: str
    day: dt.date
    journey_id: str
    step_key: str
    change_id: int
    channel: str
    sender: str
    priority: int
    at: dt.datetime  # local, naive
    window_end: dt.datetime  # local, naive
    digest: str


@dataclass(frozen=True, slots=True)
class DroppedMessage:
    external_userid: str
    journey_id: str
    change_id: int
    day: dt.date
    reason: str
    detail: str = ""  # e.g. the journey that won the day


@dataclass
class JourneyPlan:
    messages: list[PlannedMessage] = field(default_factory=list)
    dropped: list[DroppedMessage] = field(default_factory=list)

    @property
    def dropped_counts(self) -> Counter:
        return Counter(d.reason for d in self.dropped)


def step_key(change_id: int, to_layer: str) -> str:
    """The ledger's step key of a journey message: the change that started it (and its layer, so
    the fire-time check needs no join). ``lc:<change id>:<layer>``, at most 56 characters."""
    return f"lc:{change_id}:{to_layer}"


def parse_step_key(key: str) -> tuple[int, str] | None:
    """(change id, layer) from :func:`step_key`, None for any other key."""
    parts = key.split(":", 2)
    if len(parts) != 3 or parts[0] != "lc" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def digest(journey: Journey) -> str:
    body = journey.model_dump(mode="json", include={"channel", "text", "attachments", "at"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def latest_changes(changes: Iterable[Change]) -> dict[str, Change]:
    """Each customer's latest change (by time, then id)."""
    latest: dict[str, Change] = {}
    for c in changes:
        seen = latest.get(c.external_userid)
        if seen is None or (c.changed_at, c.id) > (seen.changed_at, seen.id):
            latest[c.external_userid] = c
    return latest


def plan_journeys(
    journeys: Iterable[Journey],
    changes: Iterable[Change],
    current: Mapping[str, str],
    owners: Mapping[str, str | None],
    existing: Iterable[ExistingMessage],
    limits: Limits,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
) -> JourneyPlan:
    """What to write: see the module docstring. ``changes`` must hold, for every customer it
    names, all their changes after the oldest one given (a suffix of the history), so the
    latest is known; ``current`` is each customer's layer now; ``owners`` their owner."""
    active = sorted((j for j in journeys if j.enabled), key=lambda j: j.id)
    changes = list(changes)
    latest = latest_changes(changes)
    done = {(m.journey_id, m.step_key) for m in existing}
    taken_days = {(m.external_userid, m.day) for m in existing}
    now_local = now.astimezone(tz).replace(tzinfo=None)
    plan = JourneyPlan()
    candidates: dict[tuple[str, dt.date], list[PlannedMessage]] = defaultdict(list)

    for c in sorted(changes, key=lambda c: c.id):
        for j in active:
            if not j.trigger.matches(c.from_layer, c.to_layer):
                continue
            key = step_key(c.id, c.to_layer)
            if (j.id, key) in done:
                continue  # planned before: never twice
            day = c.changed_at.astimezone(tz).date() + dt.timedelta(days=j.delay_days)

            def drop(reason: str, detail: str = "", j: Journey = j, c: Change = c, day: dt.date = day) -> None:
                plan.dropped.append(DroppedMessage(c.external_userid, j.id, c.id, day, reason, detail))

            if latest[c.external_userid].id != c.id or current.get(c.external_userid) != c.to_layer:
                drop(LEFT_LAYER, f"now in {current.get(c.external_userid) or 'no layer'}")
                continue
            if limits.is_quiet(j.clock):
                drop(QUIET_HOURS)
                continue
            at = dt.datetime.combine(day, j.clock)
            midnight = dt.datetime.combine(day, dt.time(0, 0))
            seconds = window_end_seconds(int((at - midnight).total_seconds()), limits)
            window_end = midnight + dt.timedelta(seconds=seconds)
            if window_end <= now_local:
                drop(TOO_LATE)
                continue
            owner = owners.get(c.external_userid)
            if not owner:
                drop(NO_OWNER)
                continue
            candidates[(c.external_userid, day)].append(PlannedMessage(
                external_userid=c.external_userid, day=day, journey_id=j.id, step_key=key, change_id=c.id,
                channel=j.channel.value, sender=owner, priority=j.priority, at=at, window_end=window_end,
                digest=digest(j)))

    for (customer, day), wanted in sorted(candidates.items()):
        wanted.sort(key=lambda m: (-m.priority, m.at, m.journey_id, m.change_id))
        if (customer, day) in taken_days:
            winner_name = "a message already planned that day"
            losers = wanted
        else:
            plan.messages.append(wanted[0])
            winner_name = wanted[0].journey_id
            losers = wanted[1:]
        for m in losers:
            plan.dropped.append(DroppedMessage(customer, m.journey_id, m.change_id, day, DAY_TAKEN, winner_name))
    return plan

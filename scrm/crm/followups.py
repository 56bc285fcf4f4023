"""The follow-up builder: a customer's merged timeline (chat, call, SMS) -> one record per session
and the service-quality events. Pure: messages, rules, settings and ``now`` in; records out. Same
input, same output (ties broken by message id), so a rebuild with nothing new changes nothing.

How each field is found (crm/README.md says the same for the people who read the records):

- Messages sorted by (sent_at, id). ``msgtype`` "revoke" rows are recalls, not messages. A
  recalled message keeps its place in the timeline (it takes part in splitting sessions and spans
  the record) but contributes nothing else: no text, no fact, no question, no reply, no rep.
- A new session starts when the gap to the previous message exceeds ``session_gap_hours``
  (exactly the gap is still the same session). A session whose messages were all recalled makes
  no record.
- rep: the employee with the most (non-recalled) outbound messages; a tie goes to the one who
  wrote first; none: NULL.
- first question: the first customer message the question markers find, else the customer's
  first message with text. last reply: the last outbound message with text.
- facts: every match of every fact rule in every message with text, in timeline order,
  de-duplicated by (rule, value), each with the id of the message it was first found in.
- open questions: customer questions with no outbound message after them in the session.
- next step: the first next-step rule whose conditions hold, else the default.

Service events: per session with a customer message, ``first_response`` (that message -> the
first reply after it, in this session or later); per customer turn (consecutive customer
messages, recalled ones skipped) a ``wait`` (the turn's first message -> the reply that ended it,
None while unanswered); per outbound message and phrase rule that matches it, a ``risky``.
Waiting time counts business seconds only (:func:`business_seconds`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scrm.crm.models import Direction, ServiceEventKind
from scrm.crm.rules import MAX_SCAN_CHARS, CrmRules, NextStepRule

EXCERPT_CHARS = 120


@dataclass(frozen=True)
class Msg:
    """What the builder reads of a ``crm_messages`` row."""

    id: int
    channel: str
    direction: str
    sent_at: dt.datetime  # aware
    msgtype: str = "text"
    content: str = ""
    userid: str | None = None
    revoked: bool = False

    @property
    def inbound(self) -> bool:
        return self.direction == Direction.inbound

    @property
    def live(self) -> bool:
        """Counts for content: not recalled."""
        return not self.revoked


@dataclass(frozen=True)
class BusinessHours:
    """Local opening hours on ISO weekdays (1 = Monday). ``end`` <= ``start`` is a window over
    midnight, counted to the day it opens; "24:00" is the end of the day."""

    start_minute: int
    end_minute: int
    days: frozenset[int]
    tz: dt.tzinfo

    @classmethod
    def parse(cls, spec: str, days: Iterable[int], tz: dt.tzinfo) -> BusinessHours:
        a, b = spec.split("-")
        ha, ma = (int(x) for x in a.split(":"))
        hb, mb = (int(x) for x in b.split(":"))
        return cls(ha * 60 + ma, hb * 60 + mb, frozenset(days), tz)

    def windows(self, start: dt.datetime, end: dt.datetime) -> Iterable[tuple[dt.datetime, dt.datetime]]:
        """The business windows (UTC) that may overlap [start, end)."""
        first = start.astimezone(self.tz).date() - dt.timedelta(days=1)
        last = end.astimezone(self.tz).date()
        day = first
        while day <= last:
            if day.isoweekday() in self.days:
                yield _day_window(self, day)
            day += dt.timedelta(days=1)


@functools.lru_cache(maxsize=4096)
def _day_window(hours: BusinessHours, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The day's window in UTC: local wall clock converted (zoneinfo resolves a DST gap or fold)."""
    length = hours.end_minute - hours.start_minute
    if length <= 0:
        length += 24 * 60
    return _local(day, hours.start_minute, hours.tz), _local(day, hours.start_minute + length, hours.tz)


def _local(day: dt.date, minute: int, tz: dt.tzinfo) -> dt.datetime:
    extra, minute = divmod(minute, 24 * 60)
    d = day + dt.timedelta(days=extra)
    return dt.datetime.combine(d, dt.time(minute // 60, minute % 60), tzinfo=tz).astimezone(dt.UTC)


def business_seconds(start: dt.datetime, end: dt.datetime, hours: BusinessHours) -> int:
    """Seconds of [start, end) inside business hours (0 when end <= start)."""
    if end <= start:
        return 0
    total = 0.0
    for w0, w1 in hours.windows(start, end):
        lo, hi = max(w0, start), min(w1, end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return int(total)


def business_exceeds(start: dt.datetime, end: dt.datetime, hours: BusinessHours, seconds: int) -> bool:
    """Whether [start, end) holds more than ``seconds`` of business time; stops at the first window
    that decides (a customer waiting for months costs one window, not a hundred)."""
    if end <= start:
        return False
    total = 0.0
    for w0, w1 in hours.windows(start, end):
        lo, hi = max(w0, start), min(w1, end)
        if hi > lo:
            total += (hi - lo).total_seconds()
            if int(total) > seconds:
                return True
    return False


def sessions(messages: Sequence[Msg], gap: dt.timedelta) -> list[list[Msg]]:
    """Sorted messages split where the gap to the previous one exceeds ``gap``."""
    out: list[list[Msg]] = []
    for m in messages:
        if out and m.sent_at - out[-1][-1].sent_at <= gap:
            out[-1].append(m)
        else:
            out.append([m])
    return out


@dataclass
class Record:
    """One follow-up record as built (the FollowUp row without id / built_at)."""

    first_message_id: int
    last_message_id: int
    started_at: dt.datetime
    ended_at: dt.datetime
    userid: str | None
    channels: list[str]
    message_count: int
    first_question: str
    first_question_message_id: int | None
    last_reply: str
    last_reply_message_id: int | None
    facts: list[dict[str, Any]]
    open_questions: list[dict[str, Any]]
    next_step: str
    next_step_rule: str | None

    def content(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CONTENT_FIELDS}


CONTENT_FIELDS = ("first_message_id", "last_message_id", "started_at", "ended_at", "userid", "channels",
                  "message_count", "first_question", "first_question_message_id", "last_reply",
                  "last_reply_message_id", "facts", "open_questions", "next_step", "next_step_rule")


@dataclass(frozen=True)
class Event:
    """One service-quality event (a crm_service_events row without id / customer / store)."""

    kind: str
    message_id: int
    occurred_at: dt.datetime
    userid: str | None = None
    replied_at: dt.datetime | None = None
    business_seconds: int | None = None
    rule_id: str | None = None
    phrase: str | None = None
    excerpt: str = ""

    def key(self) -> tuple:
        return (self.kind, self.message_id, self.occurred_at, self.userid, self.replied_at, self.business_seconds,
                self.rule_id, self.phrase, self.excerpt)


@dataclass
class Built:
    records: list[Record] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def timeline(messages: Iterable[Msg]) -> list[Msg]:
    """The customer's merged timeline: recall rows dropped, sorted by (sent_at, id)."""
    return sorted((m for m in messages if m.msgtype != "revoke"), key=lambda m: (m.sent_at, m.id))


def excerpt(text: str, around: int | None = None, width: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    if around is None or around < width // 2:
        return text[: width - 1] + "…"
    start = max(0, min(around - width // 3, len(text) - width + 1))
    return "…" + text[start: start + width - 2] + ("…" if start + width - 2 < len(text) else "")


def _rep(session: list[Msg]) -> str | None:
    counts: Counter[str] = Counter()
    first_at: dict[str, int] = {}
    for i, m in enumerate(session):
        if not m.inbound and m.live and m.userid:
            counts[m.userid] += 1
            first_at.setdefault(m.userid, i)
    if not counts:
        return None
    return min(counts, key=lambda u: (-counts[u], first_at[u]))


@dataclass(frozen=True)
class _Plan:
    """The rules as plain tuples for the hot loop (pydantic attribute access costs more than the
    regex search itself on a million messages)."""

    facts: tuple[tuple[str, str, str, str | None, Any], ...]  # id, kind, label, fixed value, pattern
    phrases: tuple[tuple[str, Any], ...]  # id, pattern
    markers: tuple[str, ...]


_plans: dict[int, tuple[CrmRules, _Plan]] = {}


def _plan(rules: CrmRules) -> _Plan:
    cached = _plans.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    plan = _Plan(facts=tuple((r.id, r.kind, r.label, r.value, r.pattern) for r in rules.facts),
                 phrases=tuple((p.id, p.pattern) for p in rules.phrases),
                 markers=tuple(rules.questions.markers))
    if len(_plans) > 32:
        _plans.clear()
    _plans[id(rules)] = (rules, plan)
    return plan


def _value(m: re.Match[str]) -> str:
    """A match's value: the keyword, else the group named value, else the first group, else all."""
    whole = m.group(0)
    groups = m.groupdict()
    if groups.get("_kw") is not None:
        value = groups["_kw"]
    elif groups.get("value") is not None:
        value = groups["value"]
    else:
        value = next((g for g in m.groups() if g is not None), whole)
    return value.strip() or whole


def _facts(session: list[Msg], plan: _Plan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for m in session:
        if m.revoked or not m.content:
            continue
        text = m.content[:MAX_SCAN_CHARS]
        for rule_id, kind, label, fixed, pattern in plan.facts:
            for found in pattern.finditer(text):
                if not found.group(0):
                    continue
                value = fixed or _value(found)
                if (rule_id, value) in seen:
                    continue
                seen.add((rule_id, value))
                out.append({"kind": kind, "label": label, "value": value, "rule_id": rule_id, "message_id": m.id})
    return out


def _is_question(text: str, plan: _Plan) -> bool:
    head = text[:MAX_SCAN_CHARS]
    return any(marker in head for marker in plan.markers)


def _step_holds(step: NextStepRule, *, facts: list[dict[str, Any]], open_count: int, session: list[Msg],
                now: dt.datetime) -> bool:
    w = step.when
    if w.facts and not any(f["rule_id"] in w.facts for f in facts):
        return False
    if w.fact_kinds and not any(f["kind"] in w.fact_kinds for f in facts):
        return False
    if w.open_questions is not None and w.open_questions != (open_count > 0):
        return False
    live = [m for m in session if m.live]
    last = live[-1] if live else None
    if w.last_from is not None:
        if last is None or (last.inbound != (w.last_from == "customer")):
            return False
    if w.no_reply_hours is not None:
        if last is None or not last.inbound:
            return False
        if now - last.sent_at < dt.timedelta(hours=w.no_reply_hours):
            return False
    return True


def build_record(session: list[Msg], rules: CrmRules, now: dt.datetime) -> Record | None:
    live = [m for m in session if m.live]
    if not live:
        return None  # every message recalled: nothing to follow up
    inbound_text = [m for m in live if m.inbound and m.content]
    plan = _plan(rules)
    questions = [m for m in inbound_text if _is_question(m.content, plan)]
    question_ids = {m.id for m in questions}
    first_q = questions[0] if questions else (inbound_text[0] if inbound_text else None)
    replies = [m for m in live if not m.inbound and m.content]
    last_reply = replies[-1] if replies else None
    last_out_index = max((i for i, m in enumerate(session) if m.live and not m.inbound), default=-1)
    open_questions = [{"text": excerpt(m.content, width=200), "message_id": m.id,
                       "asked_at": m.sent_at.astimezone(dt.UTC).isoformat()}
                      for i, m in enumerate(session)
                      if i > last_out_index and m.id in question_ids]
    facts = _facts(session, plan)
    step_text, step_rule = rules.default_next_step, None
    for step in rules.next_steps:
        if _step_holds(step, facts=facts, open_count=len(open_questions), session=session, now=now):
            step_text, step_rule = step.render(facts), step.id
            break
    else:
        from scrm.crm.rules import fill

        step_text = fill(rules.default_next_step, facts)
    channels = sorted({m.channel for m in live})
    return Record(
        first_message_id=session[0].id, last_message_id=session[-1].id,
        started_at=session[0].sent_at, ended_at=session[-1].sent_at,
        userid=_rep(session), channels=channels, message_count=len(live),
        first_question=first_q.content if first_q else "",
        first_question_message_id=first_q.id if first_q else None,
        last_reply=last_reply.content if last_reply else "",
        last_reply_message_id=last_reply.id if last_reply else None,
        facts=facts, open_questions=open_questions, next_step=step_text[:512], next_step_rule=step_rule)


def _events(line: list[Msg], split: list[list[Msg]], reps: list[str | None], rules: CrmRules,
            hours: BusinessHours) -> list[Event]:
    live = [m for m in line if m.live]
    # For each live message, the first live outbound message after it (the reply).
    next_reply: dict[int, Msg | None] = {}
    upcoming: Msg | None = None
    for m in reversed(live):
        next_reply[m.id] = upcoming
        if not m.inbound:
            upcoming = m
    session_rep: dict[int, str | None] = {}
    for s, rep in zip(split, reps, strict=True):
        for m in s:
            session_rep[m.id] = rep
    last_rep: dict[int, str | None] = {}
    current: str | None = None
    for m in live:
        if not m.inbound and m.userid:
            current = m.userid
        last_rep[m.id] = current

    def answerable(m: Msg, reply: Msg | None) -> str | None:
        if reply is not None and reply.userid:
            return reply.userid
        return session_rep.get(m.id) or last_rep.get(m.id)

    def waited(m: Msg, kind: str) -> Event:
        reply = next_reply[m.id]
        return Event(kind=kind, message_id=m.id, occurred_at=m.sent_at, userid=answerable(m, reply),
                     replied_at=reply.sent_at if reply else None,
                     business_seconds=business_seconds(m.sent_at, reply.sent_at, hours) if reply else None,
                     excerpt=excerpt(m.content))

    plan = _plan(rules)
    out: list[Event] = []
    for s in split:
        first_in = next((m for m in s if m.live and m.inbound), None)
        if first_in is not None:
            out.append(waited(first_in, ServiceEventKind.first_response))
    previous: Msg | None = None
    for m in live:
        if m.inbound and (previous is None or not previous.inbound):
            out.append(waited(m, ServiceEventKind.wait))
        previous = m
    for m in live:
        if m.inbound or not m.content:
            continue
        text = m.content[:MAX_SCAN_CHARS]
        for rule_id, pattern in plan.phrases:
            found = pattern.search(text)
            if found:
                out.append(Event(kind=ServiceEventKind.risky, message_id=m.id, occurred_at=m.sent_at,
                                 userid=m.userid, rule_id=rule_id, phrase=found.group(0)[:128],
                                 excerpt=excerpt(m.content, around=found.start())))
    return out


def build(messages: Iterable[Msg], rules: CrmRules, *, session_gap_hours: float, hours: BusinessHours,
          now: dt.datetime) -> Built:
    """A customer's records (oldest first) and service events from all their messages."""
    line = timeline(messages)
    split = sessions(line, dt.timedelta(hours=session_gap_hours))
    built = Built()
    reps: list[str | None] = []
    for s in split:
        record = build_record(s, rules, now)
        reps.append(record.userid if record else None)
        if record is not None:
            built.records.append(record)
    built.events = _events(line, split, reps, rules, hours)
    return built

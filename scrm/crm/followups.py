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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scrm.crm.models import Direction, ServiceEventKind
from scrm.crm.rules import MAX_SCAN_CHARS, CrmRules, fill, match_value

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


_window_cache: dict[BusinessHours, dict[int, tuple[dt.datetime, dt.datetime] | None]] = {}


def _windows(hours: BusinessHours, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """:meth:`BusinessHours.windows` as a list, each day's window looked up by its ordinal (the
    wait events call this once per customer turn: a generator and an lru_cache key per day cost
    more than the arithmetic)."""
    cache = _window_cache.get(hours)
    if cache is None:
        if len(_window_cache) > 16:
            _window_cache.clear()
        cache = _window_cache[hours] = {}
    tz = hours.tz
    first = start.astimezone(tz).toordinal() - 1
    last = end.astimezone(tz).toordinal()
    out = []
    for ordinal in range(first, last + 1):
        try:
            window = cache[ordinal]
        except KeyError:
            day = dt.date.fromordinal(ordinal)
            window = cache[ordinal] = _day_window(hours, day) if day.isoweekday() in hours.days else None
        if window is not None:
            out.append(window)
    return out


def business_seconds(start: dt.datetime, end: dt.datetime, hours: BusinessHours) -> int:
    """Seconds of [start, end) inside business hours (0 when end <= start)."""
    if end <= start:
        return 0
    total = 0.0
    for w0, w1 in _windows(hours, start, end):
        lo = w0 if w0 > start else start
        hi = w1 if w1 < end else end
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


@dataclass(frozen=True)
class _Step:
    """A next-step rule as plain values (sets for the fact conditions)."""

    id: str
    facts: frozenset[str] | None
    kinds: frozenset[str] | None
    open_questions: bool | None
    last_from_customer: bool | None
    no_reply: dt.timedelta | None
    text: str
    fills: bool  # the text holds a placeholder (else it is used as written)


@dataclass(frozen=True)
class _Plan:
    """The rules as plain tuples for the hot loop (pydantic attribute access costs more than the
    regex search itself on a million messages)."""

    # id, kind, label, fixed value, pattern, how to read a match's value (_WHOLE, _GROUP1, _GENERAL)
    facts: tuple[tuple[str, str, str, str | None, Any, int], ...]
    phrases: tuple[tuple[str, Any], ...]  # id, pattern
    markers: tuple[str, ...]
    question: Any  # one regex: any marker, as a plain substring (what ``marker in text`` finds)
    any_phrase: Any  # one regex that finds something wherever some phrase rule would (None: no shortcut)
    steps: tuple[_Step, ...]
    default_step: str


_plans: dict[int, tuple[CrmRules, _Plan]] = {}


def _any_of(rules: Sequence[Any]) -> Any:
    """One regex matching wherever one of these matchers would: a message it finds nothing in needs
    no rule-by-rule scan. None when the rules do not combine (the same group name in two regexes)."""
    parts = []
    for r in rules:
        if r.regex:
            parts.append(f"(?:{r.regex})")
        if r.keywords:
            parts.append("|".join(re.escape(k) for k in r.keywords))
    if not parts:
        return None
    try:
        return re.compile("|".join(parts), re.IGNORECASE)
    except re.error:
        return None


def _plan(rules: CrmRules) -> _Plan:
    cached = _plans.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    steps = []
    for step in rules.next_steps:
        w = step.when
        steps.append(_Step(
            id=step.id, facts=frozenset(w.facts) if w.facts else None,
            kinds=frozenset(w.fact_kinds) if w.fact_kinds else None, open_questions=w.open_questions,
            last_from_customer=None if w.last_from is None else w.last_from == "customer",
            no_reply=None if w.no_reply_hours is None else dt.timedelta(hours=w.no_reply_hours),
            text=step.text, fills="{" in step.text or "}" in step.text))
    markers = tuple(rules.questions.markers)
    plan = _Plan(facts=tuple((r.id, r.kind, r.label, r.value, r.pattern, _reading(r.pattern)) for r in rules.facts),
                 phrases=tuple((p.id, p.pattern) for p in rules.phrases),
                 markers=markers,
                 question=re.compile("|".join(re.escape(m) for m in markers)),
                 any_phrase=_any_of(rules.phrases),
                 steps=tuple(steps), default_step=rules.default_next_step)
    if len(_plans) > 32:
        _plans.clear()
    _plans[id(rules)] = (rules, plan)
    return plan


_WHOLE, _GROUP1, _GENERAL = 0, 1, 2


def _reading(pattern: re.Pattern[str]) -> int:
    """How :func:`scrm.crm.rules.match_value` reads this pattern's matches, decided once: keywords only (the whole
    match is the keyword), one group (it, else the whole match), anything else (the general way)."""
    if pattern.groups == 1 and pattern.groupindex == {"_kw": 1} and pattern.pattern.startswith("(?P<_kw>"):
        return _WHOLE
    if pattern.groups == 1 and "_kw" not in pattern.groupindex:
        return _GROUP1
    return _GENERAL


def _facts(session: list[Msg], plan: _Plan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    rules = plan.facts
    for m in session:
        if m.revoked or not m.content:
            continue
        text = m.content[:MAX_SCAN_CHARS]
        mid = m.id
        for rule_id, kind, label, fixed, pattern, reading in rules:
            for found in pattern.finditer(text):
                if not fixed:
                    whole = found.group(0)
                    if not whole:
                        continue
                    if reading == _WHOLE:
                        value = whole.strip() or whole
                    elif reading == _GROUP1:
                        group = found.group(1)
                        value = whole if group is None else (group.strip() or whole)
                    else:
                        value = match_value(found)
                elif found.end() == found.start():
                    continue
                else:
                    value = fixed
                key = (rule_id, value)
                if key in seen:
                    continue
                seen.add(key)
                out.append({"kind": kind, "label": label, "value": value, "rule_id": rule_id, "message_id": mid})
    return out


def _next_step(plan: _Plan, facts: list[dict[str, Any]], open_count: int, last: Msg,
               now: dt.datetime) -> tuple[str, str | None]:
    """The first next step whose conditions hold (``last``: the session's last live message)."""
    rule_ids = {f["rule_id"] for f in facts}
    kinds = {f["kind"] for f in facts}
    last_in = last.direction == _IN
    for step in plan.steps:
        if step.facts is not None and step.facts.isdisjoint(rule_ids):
            continue
        if step.kinds is not None and step.kinds.isdisjoint(kinds):
            continue
        if step.open_questions is not None and step.open_questions != (open_count > 0):
            continue
        if step.last_from_customer is not None and last_in != step.last_from_customer:
            continue
        if step.no_reply is not None and (not last_in or now - last.sent_at < step.no_reply):
            continue
        return (fill(step.text, facts) if step.fills else step.text), step.id
    return fill(plan.default_step, facts), None


_IN = str(Direction.inbound)


def build_record(session: list[Msg], rules: CrmRules, now: dt.datetime) -> Record | None:
    plan = _plan(rules)
    question = plan.question
    live: list[Msg] = []
    first_text_in: Msg | None = None
    questions: list[tuple[int, Msg]] = []
    last_reply: Msg | None = None
    last_out_index = -1
    counts: dict[str, int] = {}
    for i, m in enumerate(session):
        if m.revoked:
            continue
        live.append(m)
        if m.direction == _IN:
            if m.content:
                if first_text_in is None:
                    first_text_in = m
                if question.search(m.content, 0, MAX_SCAN_CHARS) is not None:
                    questions.append((i, m))
        else:
            last_out_index = i
            if m.content:
                last_reply = m
            if m.userid:
                counts[m.userid] = counts.get(m.userid, 0) + 1
    if not live:
        return None  # every message recalled: nothing to follow up
    first_q = questions[0][1] if questions else first_text_in
    # the rep: most outbound messages; a tie goes to the first to write (dicts keep that order)
    rep = None
    best = 0
    for userid, count in counts.items():
        if count > best:
            rep, best = userid, count
    open_questions = [{"text": excerpt(m.content, width=200), "message_id": m.id,
                       "asked_at": m.sent_at.astimezone(dt.UTC).isoformat()}
                      for i, m in questions if i > last_out_index]
    facts = _facts(session, plan)
    step_text, step_rule = _next_step(plan, facts, len(open_questions), live[-1], now)
    return Record(
        first_message_id=session[0].id, last_message_id=session[-1].id,
        started_at=session[0].sent_at, ended_at=session[-1].sent_at,
        userid=rep, channels=sorted({m.channel for m in live}), message_count=len(live),
        first_question=first_q.content if first_q else "",
        first_question_message_id=first_q.id if first_q else None,
        last_reply=last_reply.content if last_reply else "",
        last_reply_message_id=last_reply.id if last_reply else None,
        facts=facts, open_questions=open_questions, next_step=step_text[:512], next_step_rule=step_rule)


def _events(line: list[Msg], split: list[list[Msg]], reps: list[str | None], rules: CrmRules,
            hours: BusinessHours) -> list[Event]:
    live = [m for m in line if not m.revoked]
    # For each live message, the first live outbound message after it (the reply), and the rep
    # who wrote last before it; each message's session rep.
    session_rep: dict[int, str | None] = {}
    for s, rep in zip(split, reps, strict=True):
        for m in s:
            session_rep[m.id] = rep
    last_rep: dict[int, str | None] = {}
    current: str | None = None
    for m in live:
        if m.direction != _IN and m.userid:
            current = m.userid
        last_rep[m.id] = current
    next_reply: dict[int, Msg | None] = {}
    upcoming: Msg | None = None
    for m in reversed(live):
        next_reply[m.id] = upcoming
        if m.direction != _IN:
            upcoming = m

    def waited(m: Msg, kind: str) -> Event:
        reply = next_reply[m.id]
        if reply is not None:
            userid = reply.userid or session_rep.get(m.id) or last_rep.get(m.id)
            return Event(kind=kind, message_id=m.id, occurred_at=m.sent_at, userid=userid,
                         replied_at=reply.sent_at, business_seconds=business_seconds(m.sent_at, reply.sent_at, hours),
                         excerpt=excerpt(m.content))
        return Event(kind=kind, message_id=m.id, occurred_at=m.sent_at,
                     userid=session_rep.get(m.id) or last_rep.get(m.id), excerpt=excerpt(m.content))

    plan = _plan(rules)
    out: list[Event] = []
    for s in split:
        first_in = next((m for m in s if not m.revoked and m.direction == _IN), None)
        if first_in is not None:
            out.append(waited(first_in, ServiceEventKind.first_response))
    previous_in = False
    for m in live:
        inbound = m.direction == _IN
        if inbound and not previous_in:
            out.append(waited(m, ServiceEventKind.wait))
        previous_in = inbound
    phrases = plan.phrases
    any_phrase = plan.any_phrase
    for m in live:
        if m.direction == _IN or not m.content:
            continue
        text = m.content[:MAX_SCAN_CHARS]
        if any_phrase is not None and any_phrase.search(text) is None:
            continue
        for rule_id, pattern in phrases:
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

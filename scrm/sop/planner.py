"""The SOP planner: templates x groups x a day -> which group gets which post, from whom, when.

Pure: data in, data out, no I/O, so it is fast and tested exhaustively. The limits it keeps:
- at most ``max_posts_per_group_per_day`` posts a group a day, across all templates, counting
  posts already in the ledger; higher priority wins, ties broken by time, template id, step;
- at most ``max_mass_sends_per_group_per_day`` of them through WeCom's mass send;
- no post in quiet hours, and at least ``min_spacing`` between two posts to a group;
- a sending account (the group owner) serves at most ``max_groups_per_bot`` groups; the groups
  over that are reported, never planned;
- one slot's sends are spread over ``spread``: each group has a fixed offset, and a bot's groups
  are spaced evenly over the window, so a bot never bursts (200 groups over 20 min: one per 6 s);
- a template that prints store fields is not planned for a group without a store (it would
  print blanks where the store's name goes);
- a post whose window (see :func:`window_end_seconds`) has already ended at ``now`` is not planned:
  it would only expire. One whose time has passed but whose window is open is planned (and
  claimed at once).

For 100,000 groups the work is shared: groups that match the same templates share one sorted
candidate list, and each group walks it only until its day is full.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from scrm.config import WECOM_MASS_SENDS_PER_GROUP_PER_DAY
from scrm.sop.render import uses_store_fields
from scrm.sop.template import Channel, MemberLayers, SopTemplate, parse_clock

# Why a candidate post was not planned.
QUIET_HOURS = "quiet_hours"
DAILY_LIMIT = "daily_limit"
MASS_SEND_QUOTA = "mass_send_quota"
SPACING = "spacing"
BOT_OVER_CAPACITY = "bot_over_capacity"
NO_SENDER = "no_sender"
NO_STORE = "no_store"  # the template prints store fields and the group has no store
TOO_LATE = "too_late"  # the post's window had already ended when the day was planned
# Drops made when the plan is written into the ledger (scrm.sop.service.fit_to_ledger): the
# ledger's rows left no free slot, or no free mass sequence number, for a post the planner chose.
LEDGER_FULL = "ledger_full"
LEDGER_MASS_TAKEN = "ledger_mass_taken"
LEDGER_REASONS = (LEDGER_FULL, LEDGER_MASS_TAKEN)

DETAIL_ALL_BELOW = 5000  # below this many groups every drop is listed, above only counted


@dataclass(frozen=True, slots=True)
class GroupInfo:
    chat_id: str
    owner: str | None
    store_code: str | None = None
    city: str | None = None
    tags: frozenset[str] = frozenset()
    layer: str | None = None
    name: str = ""
    store_missing: bool = False  # store_code names no store (any more): its fields would render empty
    # (layer, share) for each layer some of its active customers are in: the share of its active
    # external members whose customer layer it is (scrm.sop.service.load_groups). Members without a
    # layer count in the whole, so shares may add up to less than 1.
    member_layers: tuple[tuple[str, float], ...] = ()

    @property
    def has_store(self) -> bool:
        """Whether the group's store fields can be filled in."""
        return bool(self.store_code) and not self.store_missing

    def member_share(self, layer: str) -> float:
        return next((share for name, share in self.member_layers if name == layer), 0.0)


@dataclass(frozen=True, slots=True)
class Limits:
    max_posts_per_group_per_day: int = 3
    max_mass_sends_per_group_per_day: int = 1
    max_groups_per_bot: int = 200
    quiet_start: dt.time = dt.time(22, 0)
    quiet_end: dt.time = dt.time(8, 0)
    min_spacing: dt.timedelta = dt.timedelta(minutes=60)
    spread: dt.timedelta = dt.timedelta(minutes=20)
    default_channel: str = Channel.mass_send.value
    # How long after its time an unsent post may still go out (sop.owner_task_window_minutes; the
    # same for mass sends), cut short by quiet hours and midnight: see window_end_seconds.
    window: dt.timedelta = dt.timedelta(minutes=180)

    def __post_init__(self):
        if not 1 <= self.max_posts_per_group_per_day <= 3:
            raise ValueError("max_posts_per_group_per_day must be 1..3 (WeCom-safe)")
        if not 1 <= self.max_groups_per_bot <= 200:
            raise ValueError("max_groups_per_bot must be 1..200 (WeCom-safe)")
        if not 0 <= self.max_mass_sends_per_group_per_day <= WECOM_MASS_SENDS_PER_GROUP_PER_DAY:
            raise ValueError(f"max_mass_sends_per_group_per_day must be 0..{WECOM_MASS_SENDS_PER_GROUP_PER_DAY} "
                             "(WeCom delivers one customer-group mass send a group a day)")

    @classmethod
    def from_settings(cls, sop) -> Limits:
        return cls(
            max_posts_per_group_per_day=sop.max_posts_per_group_per_day,
            max_mass_sends_per_group_per_day=sop.max_mass_sends_per_group_per_day,
            max_groups_per_bot=sop.max_groups_per_bot,
            quiet_start=parse_clock(sop.quiet_hours_start),
            quiet_end=parse_clock(sop.quiet_hours_end),
            min_spacing=dt.timedelta(minutes=sop.min_spacing_minutes),
            spread=dt.timedelta(minutes=sop.spread_minutes),
            default_channel=sop.default_channel,
            window=dt.timedelta(minutes=sop.owner_task_window_minutes),
        )

    def is_quiet(self, t: dt.time) -> bool:
        start, end = self.quiet_start, self.quiet_end
        if start == end:
            return False
        if start > end:  # over midnight, e.g. 22:00-08:00
            return t >= start or t < end
        return start <= t < end


DAY_SECONDS = 24 * 3600


def window_end_seconds(at_seconds: int, limits: Limits) -> int:
    """When an unsent post at ``at_seconds`` (seconds after midnight, jitter included) expires, as
    seconds after the same midnight: ``limits.window`` after its time, at the start of quiet
    hours, or at midnight, whichever is first. The ledger's ``window_ends_at`` is this time."""
    end = at_seconds + int(limits.window.total_seconds())
    quiet = limits.quiet_start.hour * 3600 + limits.quiet_start.minute * 60
    if quiet > at_seconds:
        end = min(end, quiet)
    return min(end, DAY_SECONDS)


@dataclass(frozen=True, slots=True)
class FixedPost:
    """A post of the day already in the ledger that planning must count and keep (sent, being
    sent, due, or simply in the past)."""

    chat_id: str
    template_id: str
    step_key: str
    at: dt.datetime  # local time
    channel: str


@dataclass(slots=True)
class PlannedPost:
    day: dt.date
    chat_id: str
    sender: str
    template_id: str
    step_key: str
    channel: str
    priority: int
    at: dt.datetime  # local wall-clock time, jitter included
    nominal: dt.time  # the step's time
    digest: str


@dataclass(frozen=True, slots=True)
class Dropped:
    chat_id: str
    template_id: str
    step_key: str
    nominal: dt.time
    reason: str


@dataclass
class DayPlan:
    day: dt.date
    posts: list[PlannedPost] = field(default_factory=list)
    # Every drop, counted by (template_id, step_key, reason); listed in ``dropped`` for small
    # plans or for the groups asked about.
    dropped_counts: Counter = field(default_factory=Counter)
    dropped: list[Dropped] = field(default_factory=list)
    groups_per_bot: dict[str, int] = field(default_factory=dict)
    over_capacity: dict[str, list[str]] = field(default_factory=dict)  # bot -> chat ids not served


@dataclass(frozen=True, slots=True)
class _Candidate:
    sort_key: tuple
    template_id: str
    step_key: str
    channel: str
    priority: int
    nominal: dt.time
    nominal_seconds: int
    max_offset: int  # seconds of jitter allowed before quiet hours / midnight
    quiet: bool
    digest: str
    needs_store: bool  # the template prints store fields


def step_digest(template: SopTemplate, index: int) -> str:
    """Changes when the step's content, time, channel or priority changes."""
    step = template.steps[index]
    payload = json.dumps(
        [step.model_dump(mode="json"), template.priority, template.targets.model_dump(mode="json")],
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=8).hexdigest()


class GroupIndex:
    """Which active groups match a template's targets, by set operations on small indexes."""

    def __init__(self, groups: Iterable[GroupInfo]):
        self.groups: dict[str, GroupInfo] = {g.chat_id: g for g in groups}
        self.all = frozenset(self.groups)
        self.by_store: dict[str, set[str]] = defaultdict(set)
        self.by_city: dict[str, set[str]] = defaultdict(set)
        self.by_tag: dict[str, set[str]] = defaultdict(set)
        self.by_layer: dict[str, set[str]] = defaultdict(set)
        self.with_store: set[str] = set()
        for g in self.groups.values():
            if g.has_store:
                self.with_store.add(g.chat_id)
            if g.store_code:
                self.by_store[g.store_code].add(g.chat_id)
            if g.city:
                self.by_city[g.city].add(g.chat_id)
            for tag in g.tags:
                self.by_tag[tag].add(g.chat_id)
            if g.layer:
                self.by_layer[g.layer].add(g.chat_id)
        self._shares: dict[str, tuple[list[float], list[str]]] | None = None

    def _by_share(self, layer: str) -> tuple[list[float], list[str]]:
        """The groups with members in ``layer``, by share ascending (shares, chat ids), built for
        every layer on the first member_layers target, so one target costs a bisection."""
        if self._shares is None:
            pairs: dict[str, list[tuple[float, str]]] = defaultdict(list)
            for g in self.groups.values():
                for name, share in g.member_layers:
                    if share > 0:
                        pairs[name].append((share, g.chat_id))
            self._shares = {}
            for name, items in pairs.items():
                items.sort(key=itemgetter(0))  # by share only: ties need no order (the result is a set)
                self._shares[name] = ([s for s, _ in items], [c for _, c in items])
        return self._shares.get(layer, ([], []))

    def _member_layers(self, targets: Sequence[MemberLayers]) -> set[str]:
        out: set[str] = set()
        for t in targets:
            shares, chats = self._by_share(t.layer)
            out.update(chats[bisect_left(shares, t.at_least):])
        return out

    def _union(self, index: Mapping[str, set[str]], keys: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for key in keys:
            out |= index.get(key, set())
        return out

    def match(self, template: SopTemplate) -> frozenset[str]:
        t = template.targets
        parts: list[set[str]] = []
        if t.stores:
            parts.append(self._union(self.by_store, t.stores))
        if t.cities:
            parts.append(self._union(self.by_city, t.cities))
        if t.group_tags:
            parts.append(self._union(self.by_tag, t.group_tags))
        if t.layers:
            parts.append(self._union(self.by_layer, t.layers))
        if t.member_layers:
            parts.append(self._member_layers(t.member_layers))
        if t.chat_ids:
            parts.append(set(t.chat_ids) & self.all)
        if t.with_store:
            parts.append(self.with_store)
        if parts:
            parts.sort(key=len)
            matched = set(parts[0])
            for part in parts[1:]:
                matched &= part
        else:
            matched = set(self.all)
        if t.exclude_stores:
            matched -= self._union(self.by_store, t.exclude_stores)
        if t.exclude_chat_ids:
            matched -= set(t.exclude_chat_ids)
        return frozenset(matched)


def _candidates(template: SopTemplate, limits: Limits, needs_store: bool) -> list[_Candidate]:
    out = []
    for i, step in enumerate(template.steps):
        nominal = step.clock
        seconds = nominal.hour * 3600 + nominal.minute * 60
        # Jitter must not carry a post into quiet hours or past midnight.
        limit = 24 * 3600 - seconds
        q = limits.quiet_start.hour * 3600 + limits.quiet_start.minute * 60
        if q > seconds:
            limit = min(limit, q - seconds)
        max_offset = max(0, min(int(limits.spread.total_seconds()), limit - 1))
        priority = step.priority if step.priority is not None else template.priority
        channel = (step.channel.value if step.channel else limits.default_channel)
        key = template.step_key(i)
        out.append(_Candidate(
            sort_key=(-priority, seconds, template.id, key),
            template_id=template.id, step_key=key, channel=channel, priority=priority,
            nominal=nominal, nominal_seconds=seconds, max_offset=max_offset,
            quiet=limits.is_quiet(nominal), digest=step_digest(template, i), needs_store=needs_store,
        ))
    return out


def plan_day(
    day: dt.date,
    templates: Sequence[SopTemplate],
    groups: Iterable[GroupInfo] | GroupIndex,
    limits: Limits = Limits(),
    *,
    fixed: Mapping[str, Sequence[FixedPost]] | None = None,
    explain: Collection[str] | None = None,
    now: dt.datetime | None = None,
    store_templates: Collection[str] | None = None,
) -> DayPlan:
    """Plan ``day``. ``fixed`` holds each group's posts already in the ledger for the day; they
    count against every limit and are not planned again. ``explain`` lists chat ids whose drops
    are listed one by one (all groups are listed when there are fewer than 5,000).

    ``now`` is the local wall-clock time of planning (naive, like the plan's times): posts whose
    window has ended by then are dropped as too late; None plans the whole day. ``store_templates``
    are the ids of templates that print store fields, kept from groups without a store; None
    derives them from the templates' sources (:func:`scrm.sop.render.uses_store_fields`)."""
    fixed = fixed or {}
    index = groups if isinstance(groups, GroupIndex) else GroupIndex(groups)
    plan = DayPlan(day=day)
    detail_all = len(index.groups) < DETAIL_ALL_BELOW
    explain = set(explain or ())
    midnight = dt.datetime.combine(day, dt.time(0, 0))
    max_posts = limits.max_posts_per_group_per_day
    max_mass = limits.max_mass_sends_per_group_per_day
    spacing = int(limits.min_spacing.total_seconds())
    mass = Channel.mass_send.value

    # 1. Sending accounts: each serves max_groups_per_bot groups a day. Groups that already have a
    #    post in the day's ledger come first (the day's count includes them: a group found later
    #    with a smaller chat id must not push the bot past its cap), then the rest by chat id.
    served: set[str] = set()
    by_owner: dict[str, list[str]] = defaultdict(list)
    no_owner: list[str] = []
    for chat_id, g in index.groups.items():
        (by_owner[g.owner] if g.owner else no_owner).append(chat_id)
    span = int(limits.spread.total_seconds())
    offsets: dict[str, int] = {}
    for owner, chats in by_owner.items():
        chats.sort()
        mine = sorted(([c for c in chats if c in fixed] + [c for c in chats if c not in fixed])
                      [: limits.max_groups_per_bot])
        served.update(mine)
        # A bot's groups are spaced evenly over the spread window: one slot's sends never burst.
        for i, chat_id in enumerate(mine):
            offsets[chat_id] = i * span // len(mine)
        plan.groups_per_bot[owner] = min(len(chats), limits.max_groups_per_bot)
        if len(chats) > limits.max_groups_per_bot:
            plan.over_capacity[owner] = [c for c in chats if c not in served]

    # 2. Which templates run today; groups that match the same templates form one class
    #    (partition refinement with set operations, not a loop over groups x templates).
    running = [t for t in templates if t.enabled and t.days.runs_on(day)]
    if store_templates is None:
        needs_store = {t.id for t in running if uses_store_fields(t)}
    else:
        needs_store = set(store_templates)
    per_template = {t.id: _candidates(t, limits, t.id in needs_store) for t in running}
    classes: list[tuple[tuple[str, ...], frozenset[str]]] = [((), index.all)]
    for t in running:
        matched = index.match(t)
        refined = []
        for ids, members in classes:
            inside = members & matched
            if inside:
                refined.append((ids + (t.id,), inside))
                if len(inside) < len(members):
                    refined.append((ids, members - inside))
            else:
                refined.append((ids, members))
        classes = refined
    # Groups without a store form classes of their own when a template of theirs needs a store.
    by_signature: dict[tuple[tuple[str, ...], bool], list[str]] = {}
    for ids, members in classes:
        if not ids:
            continue
        if needs_store.intersection(ids):
            with_store = [m for m in members if index.groups[m].has_store]
            without = [m for m in members if not index.groups[m].has_store]
        else:
            with_store, without = list(members), []
        for has_store, chats in ((True, with_store), (False, without)):
            if chats:
                by_signature[(ids, has_store)] = chats
    now_seconds = None if now is None else (now - midnight).total_seconds()

    counts = plan.dropped_counts
    posts = plan.posts
    clock: dict[int, dt.datetime] = {}
    for (signature, has_store), chats in by_signature.items():
        every = sorted((c for tid in signature for c in per_template[tid]), key=lambda c: c.sort_key)
        cands = every if has_store else [c for c in every if not c.needs_store]
        lacking = [] if has_store else [c for c in every if c.needs_store]
        chats.sort()
        tail_from = [0] * (len(cands) + 1)  # daily-limit drops of the tail, counted in bulk
        for chat_id in chats:
            detail = detail_all or chat_id in explain
            g = index.groups[chat_id]
            if chat_id not in served:
                unserved = BOT_OVER_CAPACITY if g.owner else NO_SENDER
                for c in every:
                    counts[(c.template_id, c.step_key, unserved)] += 1
                    if detail:
                        plan.dropped.append(Dropped(chat_id, c.template_id, c.step_key, c.nominal, unserved))
                continue
            offset = offsets[chat_id]
            sender = g.owner or ""  # served: every served group has an owner
            taken: list[tuple[int, str]] = []  # (second of day, channel)
            done: set[tuple[str, str]] = set()
            for f in fixed.get(chat_id, ()):
                taken.append((f.at.hour * 3600 + f.at.minute * 60 + f.at.second, f.channel))
                done.add((f.template_id, f.step_key))
            for c in lacking:
                if (c.template_id, c.step_key) not in done:
                    counts[(c.template_id, c.step_key, NO_STORE)] += 1
                    if detail:
                        plan.dropped.append(Dropped(chat_id, c.template_id, c.step_key, c.nominal, NO_STORE))
            mass_used = sum(1 for _, ch in taken if ch == mass)
            for i, c in enumerate(cands):
                if done and (c.template_id, c.step_key) in done:
                    continue
                if len(taken) >= max_posts:
                    if detail or done:
                        for rest in cands[i:]:
                            if (rest.template_id, rest.step_key) in done:
                                continue
                            counts[(rest.template_id, rest.step_key, DAILY_LIMIT)] += 1
                            if detail:
                                plan.dropped.append(Dropped(chat_id, rest.template_id, rest.step_key,
                                                            rest.nominal, DAILY_LIMIT))
                    else:
                        tail_from[i] += 1
                    break
                reason: str | None = None
                at = c.nominal_seconds + (offset if offset < c.max_offset else c.max_offset)
                if c.quiet:
                    reason = QUIET_HOURS
                elif now_seconds is not None and window_end_seconds(at, limits) <= now_seconds:
                    reason = TOO_LATE
                elif c.channel == mass and mass_used >= max_mass:
                    reason = MASS_SEND_QUOTA
                else:
                    for other, _ in taken:
                        if -spacing < at - other < spacing:
                            reason = SPACING
                            break
                if reason:
                    counts[(c.template_id, c.step_key, reason)] += 1
                    if detail:
                        plan.dropped.append(Dropped(chat_id, c.template_id, c.step_key, c.nominal, reason))
                    continue
                taken.append((at, c.channel))
                if c.channel == mass:
                    mass_used += 1
                when = clock.get(at)
                if when is None:
                    when = clock[at] = midnight + dt.timedelta(seconds=at)
                posts.append(PlannedPost(day, chat_id, sender, c.template_id, c.step_key, c.channel,
                                         c.priority, when, c.nominal, c.digest))
        # Expand the bulk tail counts: a group full at candidate i drops every later one.
        running_total = 0
        for i, c in enumerate(cands):
            running_total += tail_from[i]
            if running_total:
                counts[(c.template_id, c.step_key, DAILY_LIMIT)] += running_total
    return plan

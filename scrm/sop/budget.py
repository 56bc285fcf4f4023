"""A day's send budget as the ledger holds it (`scrm sop budget`): per group, what was used, what is
still open and what is left of the day's posts, by channel; per sending account, its groups and
posts. Plain figures: the CLI only prints them (a dashboard can show the same)."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from scrm.groups.models import CustomerGroup
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.planner import Limits

# A post counts as used once it went out (a mass send: its task was created or delivered).
USED = (PostStatus.sent, PostStatus.confirmed)
# Still to go: planned, due for its owner, or being sent.
OPEN = (PostStatus.planned, PostStatus.due, PostStatus.sending)
# What went wrong, in the order a person reads it: WeCom's quota, failures, expiries, and owner
# claims that lapsed without a confirmation (maybe sent: the owner says).
PROBLEMS = (PostStatus.over_quota, PostStatus.failed, PostStatus.expired, PostStatus.unconfirmed)
USED_LABEL = "used"


@dataclass
class GroupBudget:
    chat_id: str
    name: str
    owner: str  # the sending account (accounts, when the group changed owner during the day)
    posts: int = 0  # rows in the ledger: every one holds one of the day's slots
    used: int = 0
    open: int = 0
    left: int = 0  # slots of the day not taken by any row
    # channel -> label -> posts; the label is "used" (sent or confirmed) or the post's status.
    channels: dict[str, Counter] = field(default_factory=dict)
    problems: dict[PostStatus, int] = field(default_factory=dict)  # in PROBLEMS order, non-zero only


@dataclass
class AccountBudget:
    account: str
    groups: int = 0
    posts: int = 0
    sent: int = 0
    waiting: int = 0
    bad: int = 0  # failed, expired or over WeCom's quota
    over_capacity: bool = False  # more groups than sop.max_groups_per_bot


@dataclass
class DayBudget:
    day: dt.date
    limits: Limits
    posts: int
    groups: list[GroupBudget]  # by group name, then chat id
    accounts: list[AccountBudget]  # by account


def _label(status: str) -> str:
    return USED_LABEL if status in USED else str(status)


def _names(conn: Connection, chat_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(chat_ids))
    g = CustomerGroup.__table__.c
    names: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        names.update(conn.execute(select(g.chat_id, g.name).where(g.chat_id.in_(ids[i:i + 500]))).all())
    return names


def day_budget(engine: Engine | Connection, day: dt.date, limits: Limits, *,
               chat_ids: Iterable[str] | None = None) -> DayBudget:
    """The ledger's figures for ``day`` (all groups with posts that day, or only ``chat_ids``)."""
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            return day_budget(conn, day, limits, chat_ids=chat_ids)
    conn = engine
    c = SopPost.__table__.c
    q = select(c.chat_id, c.channel, c.status, c.sender).where(c.day == day)
    chosen = list(chat_ids or ())
    if chosen:
        q = q.where(c.chat_id.in_(chosen))
    rows = conn.execute(q).all()
    names = _names(conn, (r.chat_id for r in rows))

    groups: dict[str, GroupBudget] = {}
    statuses: dict[str, Counter] = defaultdict(Counter)
    senders: dict[str, set[str]] = defaultdict(set)
    accounts: dict[str, AccountBudget] = {}
    account_groups: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        g = groups.get(r.chat_id)
        if g is None:
            g = groups[r.chat_id] = GroupBudget(r.chat_id, names.get(r.chat_id) or "", "")
        g.posts += 1
        g.channels.setdefault(r.channel, Counter())[_label(r.status)] += 1
        statuses[r.chat_id][r.status] += 1
        senders[r.chat_id].add(r.sender)
        # An account's figures are the posts it sends (a group that changed owner mid-day counts
        # for both accounts, each with its own posts).
        acc = accounts.get(r.sender)
        if acc is None:
            acc = accounts[r.sender] = AccountBudget(r.sender)
        account_groups[r.sender].add(r.chat_id)
        acc.posts += 1
        acc.sent += r.status in USED
        acc.waiting += r.status in OPEN
        acc.bad += r.status in (PostStatus.failed, PostStatus.expired, PostStatus.over_quota)
    for chat_id, g in groups.items():
        counts = statuses[chat_id]
        g.owner = ", ".join(sorted(senders[chat_id]))
        g.used = sum(counts[s] for s in USED)
        g.open = sum(counts[s] for s in OPEN)
        g.left = max(0, limits.max_posts_per_group_per_day - g.posts)
        g.problems = {s: counts[s] for s in PROBLEMS if counts[s]}
    for name, acc in accounts.items():
        acc.groups = len(account_groups[name])
        acc.over_capacity = acc.groups > limits.max_groups_per_bot
    return DayBudget(
        day=day, limits=limits, posts=len(rows),
        groups=sorted(groups.values(), key=lambda g: (g.name, g.chat_id)),
        accounts=[accounts[a] for a in sorted(accounts)],
    )

"""The demo chain's last week, played through scrm's own code paths, so the dashboard has figures
on the first `scrm run`.

Nothing here writes a ledger row, a click or an order itself. A simulated clock walks the seven
local days before today, and at each moment the code that would run then runs with that time:
the planner (``plan_ahead``), the scheduler's ``fire``, the mass-send sender against the sandbox,
the owners (confirming mass sends in the sandbox, or sending owner tasks through the toolbar's
``claim``/``confirm``; some never get to it), customers and
machines opening tracked links through the real ``/t/{code}`` redirect (its clock set to the
click's time, then the write-behind flushed), the shop reporting orders and refunds through the
signed order API, and finally the KPI rollups.

Only for the sandbox corp (:class:`DemoWeekRefused` otherwise: a simulated week must never pass
for a real corp's history), only once (a ledger that already has posts before today is left
alone), and deterministic: every choice comes from a ``random.Random`` seeded with ``seed`` and
the stable names of what it decides about (group and customer names, days, templates), never
from the random ids the sandbox hands out.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from scrm.contacts.models import Customer
from scrm.db import as_utc, utcnow
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.logs import get_logger
from scrm.orders.models import Order, Refund
from scrm.sop.models import LinkClick, PostStatus, SopPost, TrackedLink
from scrm.sop.template import Channel

if TYPE_CHECKING:
    from redis import Redis

    from scrm.sandbox import Sandbox
    from scrm.sop.template import SopTemplate

log = get_logger(__name__)

DAYS = 7
DEFAULT_SEED = 12  # issue 12: the demo week
DELIVERED = (PostStatus.sent, PostStatus.confirmed)
DEMO_ORDER_PREFIX = "demo-"
SOURCE = "shop"

# What customers read posts with (the demo's customers are on WeChat; a few staff-like on WeCom).
WECHAT_IOS = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Mobile/15E148 MicroMessenger/8.0.50(0x18003237) NetType/WIFI Language/zh_CN")
WECHAT_ANDROID = ("Mozilla/5.0 (Linux; Android 14; V2307A Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Version/4.0 Chrome/122.0.6261.120 Mobile Safari/537.36 XWEB/1220099 "
                  "MMWEBSDK/20240404 MicroMessenger/8.0.49.2600(0x2800313D) WeChat/arm64 Weixin NetType/5G "
                  "Language/zh_CN ABI/arm64")
WECHAT_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/107.0.0.0 Safari/537.36 NetType/WIFI MicroMessenger/7.0.20.1781(0x6700143B) "
                  "WindowsWechat(0x63090a13) XWEB/11275 Flue")
WECOM_IOS = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh ColorScheme/Light")
PHONES = (WECHAT_IOS, WECHAT_IOS, WECHAT_ANDROID, WECHAT_ANDROID, WECHAT_WINDOWS, WECOM_IOS)
# Machines: a preview fetcher (the link forwarded to another app), a crawler, a script.
PREVIEW_FETCHER = "TelegramBot (like TwitterBot)"
CRAWLER = "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)"
SCRIPT = "curl/8.5.0"

# A coffee chain's menu: (sku, name, price in fen).
MENU = (
    ("breakfast-set", "生椰拿铁+火腿芝士可颂", 990),
    ("americano", "美式咖啡", 1290),
    ("coconut-latte", "生椰拿铁", 1590),
    ("latte", "拿铁", 1890),
    ("osmanthus-latte", "桂花拿铁", 2290),
    ("cold-brew", "冷萃咖啡", 2590),
    ("cheese-cake", "芝士蛋糕", 2890),
    ("gift-beans", "咖啡豆 250g", 3900),
)
UNMATCHED_MOBILE = "13900139000"  # a walk-in nobody in the corp has: the order is kept, unmatched


class DemoWeekRefused(Exception):
    """The demo week runs only in the sandbox corp."""


@dataclass
class DemoWeekReport:
    first_day: dt.date
    last_day: dt.date
    days: int = 0
    posts: int = 0
    delivered: int = 0
    expired: int = 0
    mass_unconfirmed: int = 0  # mass sends whose owner never confirmed WeCom's task (still ``sent``)
    clicks: int = 0  # requests to /t/ recorded (people, previews, bots)
    unique_clicks: int = 0
    not_counted: int = 0  # previews and bots
    orders: int = 0
    unmatched_orders: int = 0
    gmv_fen: int = 0
    refunds: int = 0
    refunds_fen: int = 0
    replays_unchanged: int = 0  # orders sent again that the API recorded once
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """What `scrm run` prints, in one line."""
        return (f"{self.days} days ({self.first_day:%m-%d}..{self.last_day:%m-%d}): {self.posts} posts "
                f"({self.delivered} delivered, {self.expired} expired, {self.mass_unconfirmed} mass sends never "
                f"confirmed by their owner), {self.clicks} clicks through /t/ "
                f"({self.unique_clicks} unique, {self.not_counted} previews and bots not counted), "
                f"{self.orders} orders ({self.unmatched_orders} unmatched), GMV ¥{self.gmv_fen / 100:,.2f}, "
                f"{self.refunds} refunds (¥{self.refunds_fen / 100:,.2f})")


class SimClock:
    """The simulated time every part of the week reads (aware UTC)."""

    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def unix(self) -> float:
        return self.now.timestamp()


def _rng(seed: int, *key: object) -> random.Random:
    """A generator for one decision, seeded by stable names: the same corp story whatever ids
    the sandbox handed out, and one decision never shifts another's draws."""
    return random.Random("|".join([str(seed), *map(str, key)]))


def _local(day: dt.date, hour: int, minute: int = 0, tz: dt.tzinfo = dt.UTC) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=tz).astimezone(dt.UTC)


def _tick(at: dt.datetime, every: int = 300) -> dt.datetime:
    """The first scheduler tick after ``at`` on a grid of ``every`` seconds."""
    return dt.datetime.fromtimestamp((int(at.timestamp()) // every + 1) * every, dt.UTC)


def already_played(engine: Engine, today: dt.date) -> bool:
    """The marker: a ledger with posts before today has a history (played, or real)."""
    c = SopPost.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(c.id).where(c.day < today).limit(1)).first() is not None


# -- the week of posts ------------------------------------------------------------------------------
@dataclass(order=True)
class _Event:
    at: dt.datetime
    seq: int
    kind: str = field(compare=False)
    args: tuple = field(compare=False, default=())


class _Week:
    """Plays the posts of one day after another: the planner, the scheduler's ticks, the sender,
    the owners. ``events`` is the day's timeline; each handler runs with the clock at its time."""

    def __init__(self, engine: Engine, settings, *, sandbox: Sandbox, client, templates: dict[str, SopTemplate],
                 clock: SimClock, tz: ZoneInfo, link_base: str, seed: int):
        from scrm.sop.sender import SopSender

        self.engine, self.settings, self.sandbox, self.templates = engine, settings, sandbox, templates
        self.clock, self.tz, self.link_base, self.seed = clock, tz, link_base, seed
        self.sender = SopSender(engine, client, lambda: templates, tz=tz, link_base=link_base, clock=clock)
        self.events: list[_Event] = []
        self.seq = itertools.count()
        self.handled: set[int] = set()
        self.group_names = self._group_names()

    def _group_names(self) -> dict[str, str]:
        g = CustomerGroup.__table__.c
        with self.engine.connect() as conn:
            return {r.chat_id: r.name or r.chat_id for r in conn.execute(select(g.chat_id, g.name))}

    def at(self, when: dt.datetime, kind: str, *args: Any) -> None:
        heapq.heappush(self.events, _Event(when, next(self.seq), kind, args))

    def play_day(self, day: dt.date) -> None:
        from scrm.sop.jobs import plan_ahead

        self.clock.now = _local(day, 6, tz=self.tz)
        # Each day is planned on its own morning, and only that day: planning ahead from the last
        # simulated day would re-plan today as of yesterday, bringing back posts whose time has
        # passed (the live scheduler planned today as of now).
        plan_ahead(self.engine, self.settings.sop.model_copy(update={"plan_days_ahead": 0}), now=self.clock.now,
                   templates=self.templates)
        c = SopPost.__table__.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.scheduled_for, c.window_ends_at).where(
                c.day == day, c.status == PostStatus.planned)).all()
        # The live scheduler fires every few seconds; here it ticks on a 5-minute grid, after each
        # post's time and after each window's end, and reads delivery once the owners have
        # confirmed the morning's mass sends (they do within about an hour).
        ticks = {_tick(as_utc(t)) for r in rows for t in (r.scheduled_for, r.window_ends_at)}
        end = _local(day + dt.timedelta(days=1), 0, tz=self.tz) - dt.timedelta(minutes=1)
        for when in sorted(ticks | {end}):
            self.at(when, "fire")
        self.at(_local(day, 11, 30, tz=self.tz), "poll")
        while self.events:
            event = heapq.heappop(self.events)
            if event.at > end:  # nothing of a day is left for the next one
                continue
            self.clock.now = event.at
            getattr(self, "_" + event.kind)(day, *event.args)

    # the scheduler ------------------------------------------------------------------------------
    def _fire(self, day: dt.date) -> None:
        from scrm.sop.jobs import fire

        queued: list[int] = []
        fire(self.engine, queued.extend, now=self.clock.now)
        if queued:
            self.sender.send(queued)
            self._owners_confirm_mass_sends(day, queued)
        self._owners_see_due_posts(day)

    def _poll(self, day: dt.date) -> None:
        self.sender.poll_results()

    # owners --------------------------------------------------------------------------------------
    def _post_key(self, row) -> tuple:
        return (self.group_names.get(row.chat_id, row.chat_id), row.day, row.template_id, row.step_key)

    def _owners_confirm_mass_sends(self, day: dt.date, ids: list[int]) -> None:
        """Most owners confirm WeCom's mass-send task in the client within the hour or so; some
        never do (the post stays ``sent``: WeCom created the task, nobody delivered it)."""
        c = SopPost.__table__.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.id, c.chat_id, c.day, c.template_id, c.step_key, c.msgid, c.sender)
                                .where(c.id.in_(ids), c.status == PostStatus.sent, c.msgid.is_not(None))).all()
        for row in rows:
            rng = _rng(self.seed, "mass", *self._post_key(row))
            if rng.random() < 0.85:
                self.at(self.clock.now + dt.timedelta(minutes=rng.uniform(3, 75)), "confirm_mass", row.msgid,
                        row.sender)

    def _confirm_mass(self, day: dt.date, msgid: str, userid: str) -> None:
        from scrm.sandbox.state import SandboxError

        try:
            self.sandbox.confirm_mass_send(msgid, userid)
        except SandboxError as exc:
            log.warning("demo_week_confirm_failed", msgid=msgid, userid=userid, errcode=exc.errcode)

    def _owners_see_due_posts(self, day: dt.date) -> None:
        """Owner tasks that fell due: each owner opens the chat toolbar once within the window and
        sends most of them; some are missed (they expire). No claim is left to lapse: its warning
        would reach the `scrm run` console."""
        c = SopPost.__table__.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.id, c.chat_id, c.day, c.template_id, c.step_key, c.sender,
                                       c.window_ends_at).where(c.day == day, c.status == PostStatus.due)).all()
        by_owner: dict[str, list] = defaultdict(list)
        for row in rows:
            if row.id not in self.handled:
                self.handled.add(row.id)
                by_owner[row.sender].append(row)
        for owner, due in sorted(by_owner.items()):
            sends = [r for r in due if _rng(self.seed, "owner", *self._post_key(r)).random() < 0.85]
            room = min((as_utc(r.window_ends_at) - self.clock.now).total_seconds() for r in due) / 60 - 3
            if not sends or room < 1:
                continue  # missed: they expire at the end of their window
            rng = _rng(self.seed, "toolbar", owner, *self._post_key(min(sends, key=self._post_key)))
            when = self.clock.now + dt.timedelta(minutes=rng.uniform(1, min(room, 120)))
            self.at(when, "owner_send", owner, tuple((r.id, r.chat_id) for r in sends))

    def _owner_send(self, day: dt.date, owner: str, posts: tuple[tuple[int, str], ...]) -> None:
        """What the toolbar page does: show the owner's day (content fixed, links tracked), then for
        each post: claim it, put it into the chat, confirm."""
        from scrm.sop import owner_posts

        now = self.clock.now
        owner_posts.day_posts(self.engine, owner, now=now, tz=self.tz, templates=lambda: self.templates,
                              link_base=self.link_base)
        for n, (post_id, chat_id) in enumerate(posts):
            try:
                owner_posts.claim(self.engine, post_id, owner, chat_id, now=now + dt.timedelta(minutes=n),
                                  from_wecom=False, sandbox=True)
            except owner_posts.OwnerPostError as exc:
                log.warning("demo_week_claim_refused", post_id=post_id, reason=exc.message)
                continue
            self.at(now + dt.timedelta(minutes=n, seconds=40), "owner_confirm", post_id, owner)

    def _owner_confirm(self, day: dt.date, post_id: int, owner: str) -> None:
        from scrm.sop import owner_posts

        try:
            owner_posts.confirm(self.engine, post_id, owner, now=self.clock.now)
        except owner_posts.OwnerPostError as exc:
            log.warning("demo_week_confirm_refused", post_id=post_id, reason=exc.message)


# -- who is in the groups -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Person:
    external_userid: str
    name: str
    unionid: str | None
    store_code: str | None
    ua: str
    ip: str
    member: bool  # has a member account in the mini-program: their clicks carry a customer token
    mobile: str | None  # on file in the shop
    pays_with: str  # how the shop names them: external_userid, unionid or mobile


def _people(engine: Engine, seed: int) -> tuple[dict[str, list[_Person]], dict[str, _Person]]:
    """The customers in each active group (stable order by name), each with a phone, a network, and
    how the shop knows them."""
    m, cu, g = GroupMember.__table__.c, Customer.__table__.c, CustomerGroup.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.chat_id, cu.external_userid, cu.name, cu.unionid, g.store_code)
            .select_from(GroupMember.__table__.join(Customer.__table__, cu.external_userid == m.member_id)
                         .join(CustomerGroup.__table__, g.chat_id == m.chat_id))
            .where(m.member_type == 2, m.state == MemberState.member, g.status == GroupStatus.active)
        ).all()
    names = sorted({(r.name or "", r.external_userid) for r in rows})
    people: dict[str, _Person] = {}
    for i, (name, eid) in enumerate(names):
        row = next(r for r in rows if r.external_userid == eid)
        rng = _rng(seed, "person", name)
        pays = rng.choices(("external_userid", "unionid", "mobile"), weights=(6, 2, 2))[0]
        people[eid] = _Person(
            external_userid=eid, name=name, unionid=row.unionid, store_code=row.store_code,
            ua=rng.choice(PHONES), ip=f"223.104.{(i % 250) + 1}.{rng.randint(2, 250)}",
            member=rng.random() < 0.5, mobile=f"1380013{8000 + i:04d}", pays_with=pays)
    groups: dict[str, list[_Person]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.name or "", r.external_userid)):
        groups[r.chat_id].append(people[r.external_userid])
    return groups, people


# -- clicks through the redirect ---------------------------------------------------------------------
@dataclass(order=True)
class _Click:
    at: dt.datetime
    seq: int
    code: str = field(compare=False)
    ua: str | None = field(compare=False)
    ip: str = field(compare=False)
    headers: dict[str, str] = field(compare=False, default_factory=dict)
    token_for: str | None = field(compare=False, default=None)  # the customer whose token the link carries
    person: _Person | None = field(compare=False, default=None)
    method: str = field(compare=False, default="GET")
    key: tuple = field(compare=False, default=())  # the link's post by stable names: (day, group, template)


@dataclass(frozen=True)
class _Link:
    code: str
    post_id: int
    chat_id: str
    group: str
    template_id: str
    day: dt.date
    delivered_at: dt.datetime
    store_code: str | None


def _delivered_links(engine: Engine, days: list[dt.date], names: dict[str, str]) -> list[_Link]:
    t, p, g = TrackedLink.__table__.c, SopPost.__table__.c, CustomerGroup.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.code, t.post_id, t.chat_id, t.template_id, t.day, t.position, p.sent_at, p.confirmed_at,
                   p.channel, g.store_code)
            .select_from(TrackedLink.__table__.join(SopPost.__table__, p.id == t.post_id)
                         .join(CustomerGroup.__table__, g.chat_id == t.chat_id))
            .where(t.day.in_(days), p.status.in_(DELIVERED))
        ).all()
    links = []
    for r in rows:
        at = r.confirmed_at if r.channel == Channel.mass_send.value else r.sent_at
        if at is None:  # a mass send WeCom created but nobody delivered has no readers
            continue
        links.append(_Link(r.code, r.post_id, r.chat_id, names.get(r.chat_id, r.chat_id), r.template_id, r.day,
                           as_utc(at), r.store_code))
    return sorted(links, key=lambda link: (link.day, link.group, link.template_id, link.post_id))


def _plan_clicks(links: list[_Link], groups: dict[str, list[_Person]], seed: int, tz: ZoneInfo,
                 ) -> list[_Click]:
    """Who opens which link when: members of the group (about half of them, a few twice), the
    prefetch of the chat app, now and then a preview fetcher, a friend the link was forwarded to,
    and over the week a crawler and a script."""
    seq = itertools.count()
    clicks: list[_Click] = []
    for link in links:
        key = (link.day, link.group, link.template_id)
        day_end = _local(link.day + dt.timedelta(days=1), 0, tz=tz) - dt.timedelta(minutes=5)

        def when(minutes: float, _end: dt.datetime = day_end, _link: _Link = link) -> dt.datetime:
            return min(_link.delivered_at + dt.timedelta(minutes=minutes), _end)

        rng = _rng(seed, "link", *key)
        clicks.append(_Click(when(rng.uniform(0.02, 0.1)), next(seq), link.code, WECHAT_IOS, "101.226.103.17",
                             {"Sec-Purpose": "prefetch"}))
        if rng.random() < 0.25:
            clicks.append(_Click(when(rng.uniform(5, 200)), next(seq), link.code, PREVIEW_FETCHER,
                                 "149.154.161.9"))
        if rng.random() < 0.3:
            clicks.append(_Click(when(rng.uniform(10, 300)), next(seq), link.code, WECHAT_ANDROID,
                                 f"112.65.{rng.randint(1, 250)}.{rng.randint(2, 250)}"))
        for person in groups.get(link.chat_id, []):
            prng = _rng(seed, "click", *key, person.name)
            if prng.random() >= 0.55:
                continue
            first = when(min(prng.expovariate(1 / 35), 360))
            token = person.external_userid if person.member else None
            clicks.append(_Click(first, next(seq), link.code, person.ua, person.ip, token_for=token, person=person,
                                 key=key))
            if prng.random() < 0.2:  # opened it again: recorded, counted once
                again = min(first + dt.timedelta(minutes=prng.uniform(1, 40)), day_end)
                clicks.append(_Click(again, next(seq), link.code, person.ua, person.ip, token_for=token,
                                     person=person, key=key))
    machines = _rng(seed, "machines")
    for link in machines.sample(links, min(3, len(links))):
        clicks.append(_Click(link.delivered_at + dt.timedelta(hours=machines.uniform(1, 5)), next(seq), link.code,
                             CRAWLER, "220.181.108.77"))
    for link in machines.sample(links, min(2, len(links))):
        clicks.append(_Click(link.delivered_at + dt.timedelta(minutes=machines.uniform(1, 30)), next(seq), link.code,
                             SCRIPT, "47.100.12.9", method="HEAD"))
    return sorted(clicks)


@contextmanager
def _web(engine: Engine, settings, *, redis: Redis, clock: SimClock, orders_secret: str) -> Iterator[Callable]:
    """The scrm web app in this process (the real routes: /t/{code}, /api/orders) with its clock
    set to the simulation's, behind uvicorn's proxy-headers middleware as behind a reverse proxy;
    yields ``request(ip, method, path, headers=, content=)``: one request from the address ``ip``,
    answered before it returns (httpx's ASGI transport on an event loop of its own)."""
    import asyncio

    import httpx
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from scrm.clicks.secret import clicks_secret
    from scrm.orders.signing import RedisNonces, Verifier
    from scrm.runtime import build_crypto
    from scrm.web.app import create_app

    app = create_app(
        crypto=build_crypto(settings), engine=engine, send=lambda ids: None, timezone=settings.sop.timezone,
        routing_settings=settings.routing,
        orders_verifier=Verifier(secret=orders_secret, nonces=RedisNonces(redis),
                                 tolerance_seconds=settings.orders.timestamp_tolerance_seconds),
        click_redis=redis, clicks_secret=clicks_secret(settings),
        click_window=dt.timedelta(hours=settings.clicks.unique_window_hours), clock=clock)
    proxied: Any = ProxyHeadersMiddleware(app, trusted_hosts="*")  # the client address from X-Forwarded-For
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxied), base_url="http://scrm")

    def request(ip: str, method: str, path: str, *, headers: dict[str, str] | None = None,
                content: bytes | None = None) -> httpx.Response:
        return loop.run_until_complete(client.request(method, path, content=content,
                                                      headers={**(headers or {}), "X-Forwarded-For": ip}))

    try:
        yield request
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def _click_links(clicks: list[_Click], request: Callable, clock: SimClock, settings, engine: Engine,
                 redis: Redis) -> int:
    """Every click through ``/t/{code}`` at its time, then the write-behind flushed."""
    from scrm.clicks.flush import flush_until_empty
    from scrm.clicks.secret import clicks_secret, customer_link

    secret = clicks_secret(settings)
    redirected = 0
    for click in clicks:
        clock.now = click.at
        path = f"/t/{click.code}"
        if click.token_for:  # the customer's own link (mini-program, 1:1): it carries who they are
            path = customer_link("", click.code, click.token_for, secret, click.at + dt.timedelta(days=30))
        headers = dict(click.headers)
        if click.ua is not None:
            headers["User-Agent"] = click.ua
        r = request(click.ip, click.method, path, headers=headers)
        if r.status_code == 302:
            redirected += 1
        else:
            log.warning("demo_week_click_refused", code=click.code, status=r.status_code)
    report = flush_until_empty(engine, redis, window=dt.timedelta(hours=settings.clicks.unique_window_hours),
                               batch=settings.clicks.flush_batch)
    if report.error or report.left:
        log.warning("demo_week_clicks_left_in_queue", error=report.error, left=report.left)
    return redirected


# -- the shop ------------------------------------------------------------------------------------------
@dataclass(order=True)
class _OrderPlan:
    paid_at: dt.datetime
    seq: int
    person: _Person | None = field(compare=False)
    amount_fen: int = field(compare=False)
    items: list[dict[str, Any]] = field(compare=False)
    link_code: str | None = field(compare=False, default=None)
    store_code: str | None = field(compare=False, default=None)
    at_counter: bool = field(compare=False, default=False)  # paid at the store: the clerk types the mobile
    key: tuple = field(compare=False, default=())  # stable names: who, after which post, first or again


def _basket(rng: random.Random) -> tuple[int, list[dict[str, Any]]]:
    first = rng.choice(MENU)
    basket = [first] + ([rng.choice(MENU[1:6])] if first[2] < 1500 and rng.random() < 0.4 else [])
    items = [{"sku": sku, "name": name, "qty": 1, "price_fen": price} for sku, name, price in basket]
    return sum(price for _, _, price in basket), items


def _plan_orders(clicks: list[_Click], seed: int, tz: ZoneInfo, end: dt.datetime) -> list[_OrderPlan]:
    """About a third of the customers who opened a link buy within a few hours (the shop page
    passes the link's code on half of those orders); some of them buy again a few days later at
    the counter; one walk-in nobody knows."""
    seq = itertools.count()
    plans: list[_OrderPlan] = []
    seen: set[tuple[str, str]] = set()
    for click in clicks:
        person = click.person
        if person is None or (person.external_userid, click.code) in seen:
            continue
        seen.add((person.external_userid, click.code))
        rng = _rng(seed, "order", person.name, *click.key)
        if rng.random() >= 0.35:
            continue
        paid = min(click.at + dt.timedelta(minutes=rng.uniform(4, 180)), end)
        amount, items = _basket(rng)
        plans.append(_OrderPlan(paid, next(seq), person, amount, items,
                                link_code=click.code if rng.random() < 0.5 else None, store_code=person.store_code,
                                key=(person.name, *click.key, 1)))
        if rng.random() < 0.3:  # comes back a few days later
            later = min(paid + dt.timedelta(days=rng.uniform(1, 4), minutes=rng.uniform(-90, 90)), end)
            amount, items = _basket(rng)
            plans.append(_OrderPlan(later, next(seq), person, amount, items, store_code=person.store_code,
                                    at_counter=True, key=(person.name, *click.key, 2)))
    if plans:
        rng = _rng(seed, "walk-in")
        first = min(p.paid_at for p in plans)
        amount, items = _basket(rng)
        walk_in = min(first + dt.timedelta(hours=rng.uniform(2, 48)), end)
        store = rng.choice(sorted({p.store_code for p in plans if p.store_code} or {""})) or None
        plans.append(_OrderPlan(walk_in, next(seq), None, amount, items, store_code=store, at_counter=True,
                                key=("",)))
    return sorted(plans)


def _order_body(plan: _OrderPlan, order_id: str, tz: ZoneInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"order_id": order_id, "source": SOURCE,
                            "paid_at": plan.paid_at.astimezone(tz).isoformat(timespec="seconds"),
                            "amount_fen": plan.amount_fen, "items": plan.items}
    if plan.store_code:
        body["store_code"] = plan.store_code
    if plan.link_code:
        body["link_code"] = plan.link_code
    person = plan.person
    if person is None:
        body["mobile"] = UNMATCHED_MOBILE
    elif plan.at_counter and person.pays_with == "mobile":
        body["mobile"] = person.mobile  # indexed by their first order, which named them too
    elif person.pays_with == "unionid" and person.unionid:
        body["unionid"] = person.unionid
    else:
        body["external_userid"] = person.external_userid
        if person.pays_with == "mobile":
            body["mobile"] = person.mobile
    return body


class _Shop:
    """The shop's side of the order API: every request signed, a new nonce each time."""

    def __init__(self, request: Callable, secret: str, ip: str = "10.0.0.2"):
        self.request, self.secret, self.ip = request, secret, ip

    def signed(self, body: bytes, nonce: str | None = None) -> dict[str, str]:
        from scrm.orders.signing import sign

        ts, nonce = str(int(time.time())), nonce or secrets.token_hex(16)
        return {"Content-Type": "application/json", "X-Scrm-Timestamp": ts, "X-Scrm-Nonce": nonce,
                "X-Scrm-Signature": sign(self.secret, ts, nonce, body)}

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload, ensure_ascii=False).encode()
        return self.send(path, body, self.signed(body))

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        return self.request(self.ip, "POST", path, headers=headers, content=body)


def _report_orders(plans: list[_OrderPlan], shop: _Shop, clock: SimClock, tz: ZoneInfo, seed: int,
                   end: dt.datetime) -> tuple[int, list[str]]:
    """The orders, two refunds (one partial) and one order reported again (the shop's retry,
    signed anew: recorded once). Returns (orders reported again and left unchanged, problems)."""
    problems: list[str] = []
    bodies: list[tuple[tuple, dict[str, Any]]] = []
    per_day: dict[dt.date, int] = defaultdict(int)
    for plan in plans:
        day = plan.paid_at.astimezone(tz).date()
        per_day[day] += 1
        body = _order_body(plan, f"{DEMO_ORDER_PREFIX}{day:%Y%m%d}-{per_day[day]:03d}", tz)
        clock.now = plan.paid_at
        r = shop.post("/api/orders", body)
        if r.status_code != 201:
            problems.append(f"order {body['order_id']}: {r.status_code} {r.text[:200]}")
            continue
        bodies.append((plan.key, body))
    unchanged = 0
    if bodies:
        rng = _rng(seed, "refunds")
        stable = [body for _, body in sorted(bodies, key=lambda kb: kb[0])]
        refunded = rng.sample(stable, min(2, len(stable)))
        for n, body in enumerate(refunded, 1):
            paid = dt.datetime.fromisoformat(body["paid_at"])
            amount = body["amount_fen"] if n == 1 else max(1, body["amount_fen"] // 2)
            at = min(paid + dt.timedelta(minutes=rng.uniform(20, 600)), end)
            r = shop.post("/api/orders/refunds", {"refund_id": f"{DEMO_ORDER_PREFIX}rf-{n}",
                                                  "order_id": body["order_id"], "source": SOURCE,
                                                  "amount_fen": amount,
                                                  "refunded_at": at.astimezone(tz).isoformat(timespec="seconds")})
            if r.status_code != 201:
                problems.append(f"refund of {body['order_id']}: {r.status_code} {r.text[:200]}")
        # The shop retries an order it already reported (a new signature): recorded once.
        again = stable[len(stable) // 2]
        r = shop.post("/api/orders", again)
        if r.status_code == 200 and r.json().get("created") is False:
            unchanged += 1
        else:
            problems.append(f"repeated order {again['order_id']}: {r.status_code} {r.text[:200]}")
    return unchanged, problems


# -- the whole week -------------------------------------------------------------------------------------
def _load_templates(settings) -> dict[str, SopTemplate]:
    from scrm.sop.jobs import TemplatesRefused, load_templates

    path = Path(settings.sop.templates_dir)
    if not path.exists():
        return {}
    try:
        return load_templates(path, settings.sop)
    except TemplatesRefused as exc:
        log.error("demo_week_templates_refused", problems=str(exc)[:500])
        return {}


@contextmanager
def _sandbox_at(sandbox: Sandbox, clock: SimClock) -> Iterator[None]:
    """The sandbox (WeCom) lives in the simulated time too: task send times, the daily mass-send
    quota and token lifetimes follow the clock; its own clock is put back afterwards (tokens issued
    in the past are then expired, and the client fetches a new one). A durable sandbox saves the
    week once at the end rather than after each of its hundreds of calls (each save is a full
    write and fsync of the corp)."""
    clock_before, path = sandbox.clock, sandbox.persist_path
    sandbox.clock, sandbox.persist_path = clock.unix, None
    try:
        yield
    finally:
        sandbox.clock, sandbox.persist_path = clock_before, path
        if path is not None:
            sandbox.save()


@contextmanager
def _paused(scheduler) -> Iterator[None]:
    """The live scheduler would expire the simulated days' posts at today's time: paused meanwhile."""
    if scheduler is None:
        yield
        return
    scheduler.pause()
    try:
        yield
    finally:
        scheduler.resume()


def _figures(engine: Engine, report: DemoWeekReport, days: list[dt.date], tz: ZoneInfo) -> None:
    """The report from what the database holds, not from what the simulation meant to do."""
    p, t, k = SopPost.__table__.c, TrackedLink.__table__.c, LinkClick.__table__.c
    o, r = Order.__table__.c, Refund.__table__.c
    start = _local(days[0], 0, tz=tz)
    end = _local(days[-1] + dt.timedelta(days=1), 0, tz=tz)
    with engine.connect() as conn:
        by_status: dict[str, int] = {status: n for status, n in conn.execute(
            select(p.status, func.count()).where(p.day.in_(days)).group_by(p.status))}
        report.posts = sum(by_status.values())
        report.delivered = by_status.get(PostStatus.sent, 0) + by_status.get(PostStatus.confirmed, 0)
        report.expired = by_status.get(PostStatus.expired, 0)
        report.mass_unconfirmed = conn.execute(select(func.count()).where(
            p.day.in_(days), p.channel == Channel.mass_send.value, p.status == PostStatus.sent)).scalar_one()
        codes = select(t.code).where(t.day.in_(days))
        in_week = (k.code.in_(codes),)
        report.clicks = conn.execute(select(func.count()).where(*in_week)).scalar_one()
        report.unique_clicks = conn.execute(select(func.count()).where(*in_week, k.counted)).scalar_one()
        report.not_counted = conn.execute(select(func.count()).where(*in_week, k.agent != "person")).scalar_one()
        week = (o.paid_at >= start, o.paid_at < end, o.order_id.startswith(DEMO_ORDER_PREFIX))
        report.orders, report.unmatched_orders, report.gmv_fen = conn.execute(select(
            func.count(), func.count() - func.count(o.external_userid), func.coalesce(func.sum(o.amount_fen), 0),
        ).where(*week)).one()
        report.refunds, report.refunds_fen = conn.execute(select(
            func.count(), func.coalesce(func.sum(r.amount_fen), 0)).where(
            r.refund_id.startswith(DEMO_ORDER_PREFIX))).one()


def simulate_demo_week(engine: Engine, settings, *, sandbox: Sandbox, client, redis: Redis,
                       now: dt.datetime | None = None, seed: int = DEFAULT_SEED,
                       scheduler=None) -> DemoWeekReport | None:
    """Play the seven local days before ``now`` (default: the real time) in the sandbox's demo
    chain and return what the database holds for them; None when the ledger already has posts
    before today (played before, or a history of its own).

    ``client``: scrm's WeCom client (pointed at ``sandbox``); ``redis``: the Redis the click queue
    and the order API's nonces use; ``scheduler``: the live APScheduler, paused meanwhile.
    Needs the demo chain's stores, groups and members in the database (after the sync and
    ``set_up_demo_chain``)."""
    if not settings.wecom.is_sandbox or sandbox.corp_id != settings.wecom.corp_id:
        raise DemoWeekRefused(f"the demo week is only simulated in the sandbox corp, not in {settings.wecom.corp_id}: "
                              "a simulated history must never pass for a real corp's")
    started = time.monotonic()
    now = now or utcnow()
    tz = ZoneInfo(settings.sop.timezone)
    today = now.astimezone(tz).date()
    days = [today - dt.timedelta(days=n) for n in range(DAYS, 0, -1)]
    if already_played(engine, today):
        log.info("demo_week_skipped", reason="the ledger has posts before today", today=str(today))
        return None
    report = DemoWeekReport(first_day=days[0], last_day=days[-1], days=len(days))
    templates = _load_templates(settings)
    if not templates:
        report.notes.append(f"no SOP templates in {settings.sop.templates_dir}: no posts")
    end = _local(today, 0, tz=tz) - dt.timedelta(seconds=30)
    clock = SimClock(_local(days[0], 6, tz=tz))
    link_base = settings.web.base_url()
    orders_secret = settings.orders.secret.get_secret_value()
    if not orders_secret:  # the shop needs one to sign; this app alone knows it
        orders_secret = secrets.token_hex(32)
        report.notes.append("orders.secret is not set: the demo's orders were signed with a one-off secret")
    lap = time.monotonic()

    def phase(name: str) -> None:
        nonlocal lap
        report.timings[name] = round(time.monotonic() - lap, 2)
        lap = time.monotonic()

    problems: list[str] = []
    with _paused(scheduler), _sandbox_at(sandbox, clock):
        week = _Week(engine, settings, sandbox=sandbox, client=client, templates=templates, clock=clock, tz=tz,
                     link_base=link_base, seed=seed)
        for day in days:
            week.play_day(day)
        phase("posts")
        groups, _ = _people(engine, seed)
        clicks = _plan_clicks(_delivered_links(engine, days, week.group_names), groups, seed, tz)
        with _web(engine, settings, redis=redis, clock=clock, orders_secret=orders_secret) as web:
            _click_links(clicks, web, clock, settings, engine, redis)
            phase("clicks")
            report.replays_unchanged, problems = _report_orders(_plan_orders(clicks, seed, tz, end),
                                                                _Shop(web, orders_secret), clock, tz, seed, end)
            phase("orders")
        report.notes += problems
    _refresh_rollups(engine, settings, tz)
    phase("rollups")
    _figures(engine, report, days, tz)
    report.seconds = round(time.monotonic() - started, 2)
    log.info("demo_week_played", seconds=report.seconds, posts=report.posts, delivered=report.delivered,
             clicks=report.clicks, orders=report.orders, gmv_fen=report.gmv_fen, problems=len(problems),
             **{f"{k}_s": v for k, v in report.timings.items()})
    return report


def _refresh_rollups(engine: Engine, settings, tz: ZoneInfo) -> None:
    from scrm.kpi.rollups import refresh_rollups

    refresh_rollups(engine, tz=tz, window=dt.timedelta(hours=settings.kpi.attribution_window_hours))

"""Owner reminders: one app message (textcard) per owner listing their newly due posts, with a
button that opens the chat toolbar page.

WeCom allows 30 app messages a minute to one member; an owner gets at most one reminder per
``min_interval`` (default 60 s) however many groups fall due, so a 200-group owner gets one
message, not 200.

1:1 journey messages due for an owner are listed in the same reminder ("客户 小王 · 10:00 沉睡唤醒"),
named by the journey's ``name``; the button opens the same page, which shows them in the customer's
1:1 chat.

Each line names the post by its template's ``name`` (下午茶限时秒杀), the words operators chose for
owners, never by its id (a file slug such as afternoon-flash-sale).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from scrm.contacts.models import Customer
from scrm.db import as_utc, utcnow
from scrm.groups.models import CustomerGroup
from scrm.logs import get_logger
from scrm.sop.jobs import TemplatesRefused
from scrm.sop.models import Audience, PostStatus, SopPost
from scrm.sop.template import Channel, SopTemplate
from scrm.wecom.api import AppMessageAPI
from scrm.wecom.errors import RateLimited, WeComAPIError
from scrm.wecom.messages import MAX_TEXTCARD_DESCRIPTION_BYTES, textcard, textcard_message, utf8_len

log = get_logger(__name__)
UNNAMED_POST = "SOP 内容"  # a post whose template can't be loaded now: neutral words, never its id


@dataclass
class Reminder:
    owner: str
    post_ids: list[int]
    lines: list[str]  # "A店福利1群 · 15:00 限时秒杀"
    customers: int = 0  # lines that are 1:1 journey messages ("客户 小王 · 10:00 沉睡唤醒")

    @property
    def title(self) -> str:
        groups = len(self.lines) - self.customers
        if not self.customers:
            return f"有 {groups} 个群的 SOP 内容待发送"
        if not groups:
            return f"有 {self.customers} 条客户消息待发送"
        return f"有 {groups} 个群的 SOP 内容、{self.customers} 条客户消息待发送"


def _fit(lines: list[str]) -> str:
    """As many lines as fit WeCom's 512-byte textcard description, then how many groups more
    (``messages.textcard`` would cut a description that still ran over, mid-line)."""
    out: list[str] = []
    for i, line in enumerate(lines):
        more = len(lines) - i - 1
        candidate = "\n".join([*out, line]) + (f"\n…还有 {more} 个群" if more else "")
        if utf8_len(candidate) > MAX_TEXTCARD_DESCRIPTION_BYTES - 8:
            return "\n".join(out) + f"\n…还有 {len(lines) - i} 个群"
        out.append(line)
    return "\n".join(out)


def reminder_line(group_name: str | None, chat_id: str, at: str, template_id: str,
                  template_names: Mapping[str, str]) -> str:
    """One line of a reminder: "三里屯店福利群1 · 11:54 下午茶限时秒杀"."""
    return f"{group_name or chat_id} · {at} {template_names.get(template_id) or UNNAMED_POST}"


def template_names_from(templates: Callable[[], Mapping[str, SopTemplate]] | None) -> dict[str, str]:
    """Template id -> name from the loaded templates; empty (every post shows as UNNAMED_POST)
    when there are none or they are refused, so a broken template file never stops reminders."""
    if templates is None:
        return {}
    try:
        return {tid: t.name for tid, t in templates().items()}
    except TemplatesRefused as exc:
        log.warning("sop_reminder_templates_refused", problems=str(exc)[:500])
        return {}


def pending_reminders(engine: Engine, now: dt.datetime, *, tz: dt.tzinfo, min_interval: dt.timedelta,
                      template_names: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
                      journeys: Callable[[], Mapping[str, Any]] | None = None) -> list[Reminder]:
    """The reminders due now, one per owner. ``template_names`` maps template ids to names (or
    is a callable returning that map, called only when there is something to remind of)."""
    c, g, cu = SopPost.__table__.c, CustomerGroup.__table__.c, Customer.__table__.c
    with engine.connect() as conn:
        recent = {r.sender for r in conn.execute(
            select(c.sender).where(c.reminded_at > now - min_interval).group_by(c.sender))}
        rows = conn.execute(
            select(c.id, c.sender, c.chat_id, c.template_id, c.scheduled_for, c.audience, g.name,
                   cu.name.label("customer_name"))
            .select_from(SopPost.__table__.outerjoin(CustomerGroup.__table__, g.chat_id == c.chat_id)
                         .outerjoin(Customer.__table__, (cu.external_userid == c.chat_id)
                                    & (c.audience == Audience.customer)))
            .where(c.status == PostStatus.due, c.reminded_at.is_(None), c.channel != Channel.mass_send.value)
            .order_by(c.sender, c.scheduled_for, c.chat_id)
        ).all()
    rows = [r for r in rows if r.sender not in recent]
    names: Mapping[str, str]
    if callable(template_names):
        names = template_names() if rows else {}
    else:
        names = template_names or {}
    journey_names: dict[str, dict[str, str]] = {}
    if journeys is not None and any(r.audience == Audience.customer for r in rows):
        try:
            journey_names = {jid: {jid: j.name} for jid, j in journeys().items()}
        except Exception as exc:  # a broken journey file never stops reminders (JourneysRefused)
            log.warning("sop_reminder_journeys_refused", problems=str(exc)[:500])
    by_owner: dict[str, Reminder] = {}
    for r in rows:
        rem = by_owner.setdefault(r.sender, Reminder(r.sender, [], []))
        rem.post_ids.append(r.id)
        at = as_utc(r.scheduled_for).astimezone(tz).strftime("%H:%M")
        if r.audience == Audience.customer:  # never the external_userid: the customer's name, else 客户
            rem.customers += 1
            rem.lines.append(reminder_line(f"客户 {r.customer_name or ''}".strip(), r.chat_id, at, r.template_id,
                                           {**names, **journey_names.get(r.template_id, {})}))
            continue
        rem.lines.append(reminder_line(r.name, r.chat_id, at, r.template_id, names))
    return list(by_owner.values())


def send_reminders(engine: Engine, client: AppMessageAPI, *, toolbar_url: str, tz: dt.tzinfo,
                   now: dt.datetime | None = None,
                   agent_id: int | None = None,
                   min_interval: dt.timedelta = dt.timedelta(seconds=60),
                   templates: Callable[[], Mapping[str, SopTemplate]] | None = None,
                   journeys: Callable[[], Mapping[str, Any]] | None = None) -> dict[str, int]:
    """Send each owner with newly due posts one reminder. ``templates`` is the loaded templates
    by id (the callable the sender and the toolbar page get, e.g. ``lambda:
    jobs.load_templates(path, sop)``), read only when a reminder is due, to name each post;
    without it, or when the templates are refused, posts are named UNNAMED_POST."""
    now = now or utcnow()
    counts: dict[str, int] = defaultdict(int)
    for rem in pending_reminders(engine, now, tz=tz, min_interval=min_interval,
                                 template_names=lambda: template_names_from(templates), journeys=journeys):
        card = textcard(rem.title, _fit(rem.lines), toolbar_url, btntxt="去发送")
        try:
            result = client.send_app_message(textcard_message(rem.owner, card, agentid=agent_id))
        except RateLimited:
            counts["rate_limited"] += 1  # the next fire cycle tries again
            continue
        except WeComAPIError as exc:
            counts["failed"] += 1
            log.warning("sop_reminder_failed", owner=rem.owner, errcode=exc.errcode)
            continue
        if rem.owner in (result.get("invaliduser") or []):
            counts["invalid_owner"] += 1
            log.warning("sop_reminder_owner_unknown", owner=rem.owner)
        c = SopPost.__table__.c
        with engine.begin() as conn:
            conn.execute(update(SopPost.__table__).where(c.id.in_(rem.post_ids), c.reminded_at.is_(None))
                         .values(reminded_at=now))
        counts["sent"] += 1
        counts["posts"] += len(rem.post_ids)
    if counts:
        log.info("sop_reminders", **counts)
    return dict(counts)

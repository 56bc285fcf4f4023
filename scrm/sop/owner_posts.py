"""The group owner's side of the send ledger: the day's posts for an owner, and the life of one
post sent from the chat toolbar page (claim, then confirm or release).

Why a claim first: the page puts a post into the chat with the JS-SDK, and that cannot be taken
back. So the server first takes the post for that owner and that chat (``due -> sending``, with a
lease); the page sends only a claimed post, then confirms it (``sending -> sent``). A send that
was cancelled or failed before anything reached the chat releases it (``sending -> due``, or
``expired`` once its window has ended). A claim whose lease passes without a word becomes
``unconfirmed`` (:func:`lapse_claims`): it may well have reached the group, so it is never offered
again as unsent; the page asks the owner, who confirms it or releases it.

1:1 journey messages (audience ``customer``) live the same life: the page opened in the customer's
1:1 chat (``getCurExternalContact``) shows the owner's messages for that customer and claims them
for that chat; the claim checks that the owner still follows the customer.

Every update is conditional on the status and the owner in its WHERE clause, so two taps, two
tabs or a replayed request change nothing twice. Refusals are :class:`OwnerPostError` subclasses
whose message is Chinese (the page shows it to the owner as is) and whose ``kind`` the web layer
maps to an HTTP status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from scrm.contacts.models import Employee
from scrm.db import as_utc
from scrm.groups.models import CustomerGroup, GroupStatus
from scrm.logs import get_logger
from scrm.sop.models import Audience, PostStatus, SopPost
from scrm.sop.sender import RenderProblem, RenderProblemKind, render_post, track_links
from scrm.sop.template import Channel, SopTemplate
from scrm.stores.models import Store
from scrm.wecom.messages import PostContent, chat_messages

log = get_logger(__name__)

# How long a claim holds: long enough for the owner to finish WeCom's send sheet for every message
# of a post, short enough that a page that died mid-send is reported within minutes.
LEASE = dt.timedelta(minutes=5)
RELEASE_REASONS = ("cancelled", "failed", "not_sent")
MAX_MESSAGES = 20  # a post is a text and at most a handful of attachments

STATUS_TEXT: dict[str, str] = {
    PostStatus.planned: "未到时间", PostStatus.due: "待发送", PostStatus.sending: "发送中",
    PostStatus.sent: "已发送", PostStatus.confirmed: "已送达", PostStatus.failed: "失败",
    PostStatus.expired: "已过期", PostStatus.over_quota: "群发额度已用完", PostStatus.unconfirmed: "待确认是否发出",
}


# -- errors ---------------------------------------------------------------------------------------
class OwnerPostError(Exception):
    """A refusal the owner reads: ``message`` is Chinese; ``kind`` is one of not_found, forbidden,
    conflict, bad_request (the router turns it into 404, 403, 409, 400)."""

    kind = "conflict"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class PostNotFound(OwnerPostError):
    kind = "not_found"


class NotYourPost(OwnerPostError):
    """The post is planned for another owner, or its group now belongs to someone else."""

    kind = "forbidden"


class NotInWeCom(OwnerPostError):
    """A claim from outside WeCom on a real corp: nothing could actually be sent from there."""

    kind = "forbidden"


class PostNotSendable(OwnerPostError):
    """Another chat's post, a mass send, or a post that is not due (its status named in Chinese)."""

    kind = "conflict"


class BadOwnerRequest(OwnerPostError):
    kind = "bad_request"


# -- the day's posts -----------------------------------------------------------------------------
def owner_name(engine: Engine, owner: str) -> str:
    """How the page greets the owner: their name, else their userid."""
    e = Employee.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(e.name).where(e.userid == owner)).scalar() or owner


@dataclass
class OwnerPost:
    id: int
    chat_id: str
    template_id: str
    name: str
    time: str  # HH:MM in the corp's zone
    channel: str
    status: str
    status_text: str
    sent_by: str | None
    content: dict[str, Any] | None
    error: str | None  # why the content cannot be shown (Chinese)
    note: str | None  # a sent post's note, e.g. what of it did not go (Chinese)
    sendable: bool  # due, this owner's, content ready: the page may claim it
    pending: bool  # claimed by this owner, no confirmation yet: wait, don't send again
    answerable: bool  # unconfirmed, claimed by this owner: ask whether it reached the group
    audience: str = Audience.group  # customer: a 1:1 journey message, chat_id is the customer


@dataclass
class OwnerDay:
    owner: str
    day: dt.date
    groups: list[dict[str, str]] = field(default_factory=list)  # chat_id, name
    customers: list[dict[str, str]] = field(default_factory=list)  # chat_id (external_userid), name: 1:1 messages
    posts: list[OwnerPost] = field(default_factory=list)


RENDER_PROBLEM_TEXT: dict[RenderProblemKind, str] = {
    RenderProblemKind.template_gone: "这条内容的模板已被运营修改或删除，无法发送，请联系运营人员。",
    RenderProblemKind.step_gone: "这条内容的模板已被运营修改或删除，无法发送，请联系运营人员。",
    RenderProblemKind.group_gone: "这个群已解散或不再由系统管理，内容不会发送。",
    RenderProblemKind.no_store: "这个群还没有关联门店，而内容里要填门店信息，所以无法发送，请联系运营人员。",
    RenderProblemKind.render_error: "内容生成失败，无法发送，请联系运营人员。",
    RenderProblemKind.journey_gone: "这条消息的客户旅程已被运营修改或删除，无法发送，请联系运营人员。",
    RenderProblemKind.customer_gone: "你已不再跟进这位客户（或客户已删除你），这条消息不会发送。",
}


def _render_problem(problem: RenderProblem) -> str:
    """render_post's reason as a line the owner can act on (the English detail goes to the log)."""
    return RENDER_PROBLEM_TEXT[problem.kind]


def status_text(status: str, channel: str, claimed_by: str | None) -> str:
    if status == PostStatus.sending:
        return "发送结果待确认" if claimed_by else "群发提交中"
    return STATUS_TEXT.get(status, status)


def day_posts(engine: Engine, owner: str, *, now: dt.datetime, tz: dt.tzinfo,
              templates: Callable[[], Mapping[str, SopTemplate]], link_base: str,
              journeys: Callable[[], Mapping[str, Any]] | None = None) -> OwnerDay:
    """The owner's active groups and today's posts for them, then today's 1:1 journey messages
    the owner sends (``journeys``: the journeys by id). A due post's content is rendered and fixed
    in the ledger the first time it is shown (links tracked), so what the owner sends is what the
    ledger records."""
    today = now.astimezone(tz).date()
    g, c = CustomerGroup.__table__.c, SopPost.__table__.c
    with engine.connect() as conn:
        groups = conn.execute(select(CustomerGroup.__table__)
                              .where(g.owner_userid == owner, g.status == GroupStatus.active)
                              .order_by(g.name, g.chat_id)).all()
        chats = [r.chat_id for r in groups]
        rows = conn.execute(select(SopPost.__table__).where(c.day == today, c.chat_id.in_(chats))
                            .order_by(c.scheduled_for, c.id)).all() if chats else []
        codes = {r.store_code for r in groups if r.store_code}
        stores = {s.code: s for s in conn.execute(select(Store.__table__).where(Store.__table__.c.code.in_(codes)))}
    by_chat = {r.chat_id: r for r in groups}
    loaded = templates() if rows else {}
    day = OwnerDay(owner=owner, day=today, groups=[{"chat_id": r.chat_id, "name": r.name or r.chat_id} for r in groups])
    for p in rows:
        content, error = p.content, None
        if content is None:
            group = by_chat[p.chat_id]
            content, reason = render_post(p, loaded, group, stores.get(group.store_code))
            if reason is not None:
                log.warning("toolbar_post_unrenderable", post_id=p.id, chat_id=p.chat_id, reason=str(reason))
                error = _render_problem(reason)
            elif content is not None and p.status == PostStatus.due:
                content = track_links(engine, p, content, link_base, now)
                with engine.begin() as conn:
                    fixed = conn.execute(update(SopPost.__table__).where(c.id == p.id, c.content.is_(None))
                                         .values(content=content)).rowcount
                    if not fixed:  # another tab fixed it first: show what the ledger holds
                        content = conn.execute(select(c.content).where(c.id == p.id)).scalar()
        mine = p.claimed_by == owner
        day.posts.append(OwnerPost(
            id=p.id, chat_id=p.chat_id, template_id=p.template_id,
            name=loaded[p.template_id].name if p.template_id in loaded else "SOP 内容",
            time=as_utc(p.scheduled_for).astimezone(tz).strftime("%H:%M"), channel=p.channel,
            status=p.status, status_text=status_text(p.status, p.channel, p.claimed_by), sent_by=p.sent_by,
            content=content, error=error,
            note=p.error if p.status in (PostStatus.sent, PostStatus.confirmed) and p.channel != Channel.mass_send.value
            else None,
            sendable=p.status == PostStatus.due and p.sender == owner and content is not None
            and p.channel != Channel.mass_send.value,
            pending=p.status == PostStatus.sending and mine,
            answerable=p.status == PostStatus.unconfirmed and mine,
        ))
    _customer_posts(engine, day, owner, now=now, tz=tz, journeys=journeys, link_base=link_base)
    return day


def _customer_posts(engine: Engine, day: OwnerDay, owner: str, *, now: dt.datetime, tz: dt.tzinfo,
                    journeys: Callable[[], Mapping[str, Any]] | None, link_base: str) -> None:
    """Today's 1:1 journey messages of ``owner`` into ``day`` (and their customers)."""
    from scrm.journeys.content import MessageProblem, employee_names, load_recipients, render_message

    c = SopPost.__table__.c
    with engine.connect() as conn:
        rows = conn.execute(select(SopPost.__table__).where(
            c.day == day.day, c.audience == Audience.customer, c.sender == owner)
            .order_by(c.scheduled_for, c.id)).all()
        recipients = load_recipients(conn, (r.chat_id for r in rows))
        owner_names = employee_names(conn, [owner])
    if not rows:
        return
    loaded = journeys() if journeys is not None else {}
    seen: set[str] = set()
    for p in rows:
        who = recipients.get(p.chat_id)
        if p.chat_id not in seen:
            seen.add(p.chat_id)
            day.customers.append({"chat_id": p.chat_id, "name": (who.name if who else "") or "客户"})
        content, error = p.content, None
        if content is None and p.status in (PostStatus.planned, PostStatus.due):
            try:
                content = render_message(p, loaded, who, owner_names.get(owner, owner))
            except MessageProblem as exc:
                log.warning("toolbar_message_unrenderable", post_id=p.id, external_userid=p.chat_id, reason=str(exc))
                content, error = None, _render_problem(RenderProblem(RenderProblemKind(exc.kind), str(exc)))
            if content is not None and p.status == PostStatus.due:
                content = track_links(engine, p, content, link_base, now)
                with engine.begin() as conn:
                    fixed = conn.execute(update(SopPost.__table__).where(c.id == p.id, c.content.is_(None))
                                         .values(content=content)).rowcount
                    if not fixed:
                        content = conn.execute(select(c.content).where(c.id == p.id)).scalar()
        mine = p.claimed_by == owner
        journey = loaded.get(p.template_id)
        day.posts.append(OwnerPost(
            id=p.id, chat_id=p.chat_id, template_id=p.template_id,
            name=getattr(journey, "name", None) or "客户消息",
            time=as_utc(p.scheduled_for).astimezone(tz).strftime("%H:%M"), channel=p.channel,
            status=p.status, status_text=status_text(p.status, p.channel, p.claimed_by), sent_by=p.sent_by,
            content=content, error=error,
            # Sent: what of it did not go; expired: why it did not go out (e.g. the customer left the layer).
            note=p.error if (p.status in (PostStatus.sent, PostStatus.confirmed)
                             and p.channel != Channel.mass_send.value) or p.status == PostStatus.expired else None,
            sendable=p.status == PostStatus.due and content is not None and p.channel != Channel.mass_send.value,
            pending=p.status == PostStatus.sending and mine,
            answerable=p.status == PostStatus.unconfirmed and mine,
            audience=Audience.customer,
        ))


# -- claim, confirm, release, lapse -----------------------------------------------------------------
@dataclass
class Claim:
    post_id: int
    chat_id: str
    content: dict[str, Any]  # what the ledger fixed: the page sends exactly this
    lease_until: dt.datetime
    # The JS-SDK messages to send, in order, each with a Chinese label and what to post by hand if
    # that message does not go (see owner_messages).
    messages: list[dict[str, Any]] = field(default_factory=list)


def owner_messages(content: Any) -> list[dict[str, Any]]:
    """The post as sendChatMessage messages (built in scrm.wecom.messages), each with the words
    the page shows the owner: a label, and the text to add by hand if it did not go."""
    parts: list[dict[str, Any]] = []
    fixed: PostContent = content if content else {"attachments": []}
    for attachment, msg in chat_messages(fixed):
        if attachment is None:
            label, manual = "文字", msg["text"]["content"]
        elif attachment["msgtype"] == "link":
            link = attachment["link"]
            label, manual = f"链接「{link['title']}」", f"{link['title']}\n{link['url']}"
        elif attachment["msgtype"] == "miniprogram":
            title = attachment["miniprogram"]["title"]
            label, manual = f"小程序「{title}」", f"小程序：{title}"
        else:
            label, manual = "图片", "图片"
        parts.append({"label": label, "manual": manual, "msg": msg})
    return parts


@dataclass
class Outcome:
    status: str
    changed: bool
    sent_by: str | None = None


@dataclass
class Partial:
    """Some messages of a post went, a later one did not: recorded sent, with what is missing."""

    sent: int
    total: int
    missing: list[str]

    def check(self) -> Partial:
        if not (1 <= self.sent < self.total <= MAX_MESSAGES) or not self.missing or len(self.missing) > MAX_MESSAGES \
                or not all(isinstance(m, str) and m.strip() for m in self.missing):
            raise BadOwnerRequest("发送结果不完整，请刷新页面后确认是否已发到群里")
        self.missing = [m.strip()[:80] for m in self.missing]
        return self

    def note(self) -> str:
        return f"只发出了 {self.sent}/{self.total} 条，没有发出：{'、'.join(self.missing)}（需群主手动补发）"


def _read(conn: Connection, post_id: int):
    post = conn.execute(select(SopPost.__table__).where(SopPost.__table__.c.id == post_id)).first()
    if post is None:
        raise PostNotFound("这条内容不存在了，请刷新页面")
    return post


def _check_owner(conn: Connection, post, owner: str) -> None:
    """Only the owner a post is planned for, and only while the group is still theirs (a 1:1
    message: while they still follow the customer)."""
    if post.audience == Audience.customer:
        from scrm.contacts.models import FollowRelation, FollowStatus

        f = FollowRelation.__table__.c
        follows = conn.execute(select(f.id).where(f.userid == owner, f.external_userid == post.chat_id,
                                                  f.status == FollowStatus.active)).first()
        if post.sender != owner or follows is None:
            log.warning("toolbar_forbidden", userid=owner, post_id=post.id, external_userid=post.chat_id)
            raise NotYourPost("这条消息属于别的同事跟进的客户，不能由你发送")
        return
    group_owner = conn.execute(select(CustomerGroup.__table__.c.owner_userid)
                               .where(CustomerGroup.__table__.c.chat_id == post.chat_id)).scalar()
    if post.sender != owner or group_owner != owner:
        log.warning("toolbar_forbidden", userid=owner, post_id=post.id, chat_id=post.chat_id)
        raise NotYourPost("这条内容属于别的群主的群，不能由你发送")


def _not_sendable(post, owner: str, now: dt.datetime) -> PostNotSendable:
    """Why a claim of this (re-read) post changed nothing, in words the owner understands."""
    status = post.status
    if status == PostStatus.due and as_utc(post.window_ends_at) <= now:
        return PostNotSendable("这条内容已过期（发送时间已过），不能再发送")
    if status == PostStatus.due and post.content is None:
        return PostNotSendable("内容还没准备好，请刷新页面后再发送")
    if status == PostStatus.sending and post.claimed_by == owner:
        return PostNotSendable("这条内容正在发送，请等发送结果，不要重复发送")
    if status == PostStatus.unconfirmed:
        return PostNotSendable("这条内容的发送结果待确认：请先回答它是否已发到群里")
    if status in (PostStatus.sent, PostStatus.confirmed):
        return PostNotSendable("这条内容已经发过了，不要重复发送")
    return PostNotSendable(f"这条内容现在是「{STATUS_TEXT.get(status, status)}」，不能发送")


def claim(engine: Engine, post_id: int, owner: str, chat_id: str, *, now: dt.datetime,
          lease: dt.timedelta = LEASE, from_wecom: bool = True, sandbox: bool = False) -> Claim:
    """Take a due post for ``owner`` in ``chat_id`` before the page sends it (``due -> sending``).

    ``from_wecom``: the request came from inside the WeCom client. Outside it nothing can really be
    sent, so on a real corp the claim is refused; only the sandbox simulates sends."""
    if not from_wecom and not sandbox:
        log.warning("toolbar_claim_outside_wecom", userid=owner, post_id=post_id)
        raise NotInWeCom("请在企业微信里，从客户群的聊天工具栏打开这个页面再发送")
    table, c = SopPost.__table__, SopPost.__table__.c
    with engine.begin() as conn:
        post = _read(conn, post_id)
        _check_owner(conn, post, owner)
        if chat_id != post.chat_id:
            raise PostNotSendable("这条消息是发给另一位客户的：请在和那位客户的聊天里打开工具栏发送"
                                  if post.audience == Audience.customer
                                  else "这条内容是另一个群的：请在那个群里打开工具栏发送")
        if post.channel == Channel.mass_send.value:
            raise PostNotSendable("企业群发请在企业微信「群发助手」里确认，不在这里发送")
        lease_until = now + lease
        claimed = conn.execute(
            update(table).where(c.id == post_id, c.status == PostStatus.due, c.sender == owner,
                                c.claimed_by.is_(None), c.window_ends_at > now, c.content.is_not(None))
            .values(status=PostStatus.sending, claimed_by=owner, lease_until=lease_until, updated_at=now)
            .returning(c.content)
        ).first()
        if claimed is not None and not owner_messages(claimed.content):
            # Nothing the JS-SDK can put into a chat (e.g. an image known only by URL).
            raise PostNotSendable("这条内容没有能从工具栏发到群里的消息，请联系运营人员")  # (rolls back)
        if claimed is None:
            post = _read(conn, post_id)
            if post.status == PostStatus.due and as_utc(post.window_ends_at) <= now:
                # The scheduler has not expired it yet; say so in the ledger too.
                conn.execute(update(table).where(c.id == post_id, c.status == PostStatus.due)
                             .values(status=PostStatus.expired, updated_at=now))
    if claimed is None:
        log.info("toolbar_claim_refused", userid=owner, post_id=post_id, chat_id=chat_id, status=post.status)
        raise _not_sendable(post, owner, now)
    log.info("toolbar_post_claimed", userid=owner, post_id=post_id, chat_id=chat_id,
             lease_until=lease_until.isoformat())
    return Claim(post_id=post_id, chat_id=chat_id, content=claimed.content, lease_until=lease_until,
                 messages=owner_messages(claimed.content))


def confirm(engine: Engine, post_id: int, owner: str, *, now: dt.datetime, partial: Partial | None = None) -> Outcome:
    """The page says WeCom sent the claimed post (``sending -> sent``); only the claim's owner can.
    A post whose claim lapsed (``unconfirmed``) is recorded sent when its owner says it went.
    ``partial``: a later message failed after an earlier one went; recorded sent, with a note."""
    note = partial.check().note() if partial is not None else None
    table, c = SopPost.__table__, SopPost.__table__.c
    with engine.begin() as conn:
        changed = conn.execute(
            update(table).where(c.id == post_id, c.status.in_((PostStatus.sending, PostStatus.unconfirmed)),
                                c.claimed_by == owner)
            .values(status=PostStatus.sent, sent_by=owner, sent_at=now, lease_until=None, error=note, updated_at=now)
        ).rowcount
        post = _read(conn, post_id)
    if changed:
        log.info("toolbar_post_sent", userid=owner, post_id=post_id, chat_id=post.chat_id, partial=note is not None)
        return Outcome(PostStatus.sent, True, owner)
    if owner not in (post.sender, post.claimed_by):
        log.warning("toolbar_forbidden", userid=owner, post_id=post_id, chat_id=post.chat_id)
        raise NotYourPost("这条内容属于别的群主的群，不能由你确认")
    if post.status in (PostStatus.sent, PostStatus.confirmed) and post.sent_by == owner:
        return Outcome(post.status, False, owner)  # a second confirm: already recorded
    if post.status in (PostStatus.sending, PostStatus.unconfirmed):
        raise NotYourPost("这条内容是别的群主在发送，不能由你确认")
    raise PostNotSendable(f"这条内容现在是「{STATUS_TEXT.get(post.status, post.status)}」，不能记为已发送")


def release(engine: Engine, post_id: int, owner: str, *, now: dt.datetime, reason: str) -> Outcome:
    """Nothing of the claimed post reached the chat (cancelled, failed, or the owner says it did
    not go): back to ``due`` while its window is open, else ``expired``."""
    if reason not in RELEASE_REASONS:
        raise BadOwnerRequest("请求不完整，请刷新页面后重试")
    table, c = SopPost.__table__, SopPost.__table__.c
    held = (c.id == post_id, c.status.in_((PostStatus.sending, PostStatus.unconfirmed)), c.claimed_by == owner)
    with engine.begin() as conn:
        status = PostStatus.due
        changed = conn.execute(
            update(table).where(*held, c.window_ends_at > now)
            .values(status=PostStatus.due, claimed_by=None, lease_until=None, updated_at=now)).rowcount
        if not changed:
            status = PostStatus.expired
            changed = conn.execute(update(table).where(*held, c.window_ends_at <= now)
                                   .values(status=PostStatus.expired, lease_until=None, updated_at=now)).rowcount
        post = _read(conn, post_id)
    if changed:
        log.info("toolbar_post_released", userid=owner, post_id=post_id, chat_id=post.chat_id, reason=reason,
                 status=str(status))
        return Outcome(status, True)
    if owner not in (post.sender, post.claimed_by):
        log.warning("toolbar_forbidden", userid=owner, post_id=post_id, chat_id=post.chat_id)
        raise NotYourPost("这条内容属于别的群主的群，不能由你操作")
    if post.status in (PostStatus.due, PostStatus.expired):
        return Outcome(post.status, False)  # a second release: nothing more to do
    if post.status in (PostStatus.sent, PostStatus.confirmed):
        raise PostNotSendable("这条内容已记为已发送，不能撤回")
    raise PostNotSendable(f"这条内容现在是「{STATUS_TEXT.get(post.status, post.status)}」，不能撤回")


def lapse_claims(engine: Engine, now: dt.datetime) -> list[int]:
    """Owner claims whose lease passed without a confirmation become ``unconfirmed``: the post may
    have reached the group, so it is never offered again as unsent; the page asks its owner."""
    table, c = SopPost.__table__, SopPost.__table__.c
    with engine.begin() as conn:
        rows = conn.execute(
            update(table).where(c.status == PostStatus.sending, c.claimed_by.is_not(None), c.lease_until <= now)
            .values(status=PostStatus.unconfirmed, updated_at=now)
            .returning(c.id, c.chat_id, c.claimed_by)
        ).all()
    for r in rows:
        log.warning("toolbar_claim_lapsed", post_id=r.id, chat_id=r.chat_id, userid=r.claimed_by)
    return [r.id for r in rows]

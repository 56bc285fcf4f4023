"""Sending claimed SOP posts through their channel, and reading mass-send delivery back.

mass_send: posts with the same sender and the same rendered content go out in one
add_msg_template call (chat_type group, at most 2000 chat ids). WeCom only creates a task; the
owner confirms it in the client, and get_groupmsg_task / get_groupmsg_send_result tell us what
each group received: status 1 confirmed, 2 failed (group gone), 3 over WeCom's quota, recorded
as such and never retried blindly.

1:1 journey messages (audience ``customer``, ``chat_id`` the customer's external_userid) go the
same way as add_msg_template chat_type single with ``external_userid`` lists (at most 10,000 a
call), grouped per owner and content; get_groupmsg_send_result answers them by external_userid.
WeCom delivers at most one mass message a day to a customer (status 3 otherwise: over_quota).

Never double-sent: a post is sent only from ``sending``, which one scheduler moved it to. When
the call's outcome is unknown (a timeout after the request left), the sender looks for the task
in get_groupmsg_list_v2 before trying again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.groups.models import CustomerGroup, GroupStatus
from scrm.layers.tagsync import LocalRateLimiter, RateLimiter
from scrm.logs import get_logger
from scrm.sop.models import Audience, PostStatus, SopPost, TrackedLink
from scrm.sop.render import (
    TemplateRenderError,
    build_context,
    group_fields,
    render_step,
    store_fields,
    uses_store_fields,
)
from scrm.sop.template import Channel, SopTemplate
from scrm.stores.models import Store
from scrm.wecom.api import SopSendAPI
from scrm.wecom.errors import RateLimited, SystemBusy, TransportError, WeComAPIError
from scrm.wecom.messages import (
    MAX_CHATS_PER_TEMPLATE,
    Attachment,
    MessageLimitError,
    PostContent,
    SingleMsgTemplate,
    group_msg_template,
    post_content,
    robot_messages,
)

log = get_logger(__name__)
MAX_CHATS_PER_CALL = MAX_CHATS_PER_TEMPLATE
MAX_CUSTOMERS_PER_CALL = 10_000  # add_msg_template chat_type single: external_userid holds at most 10,000
RETRY_AFTER = dt.timedelta(minutes=2)
# add_msg_template calls a minute: WeCom refuses a corp's 10,001st call to one API in a minute
# (45009, blocked for the rest of the minute). The margin is for the other clock and other callers.
ADD_MSG_TEMPLATE_PER_MINUTE = 9_000
SEND_CONCURRENCY = 8  # sop.send_concurrency's default
LOOKUP_PAGES = 20  # get_groupmsg_list_v2 pages (100 tasks each) read when looking for a created task


def single_msg_template(sender: str, external_userids: list[str], content: PostContent) -> SingleMsgTemplate:
    """The 1:1 mass-send task (add_msg_template chat_type single, reference 3.7) for up to 10,000
    customers of one ``sender`` (their owner), who confirms it in the client."""
    if not sender:
        raise MessageLimitError("sender is required")
    if not 1 <= len(external_userids) <= MAX_CUSTOMERS_PER_CALL:
        raise MessageLimitError(f"external_userid holds {len(external_userids)} customers; WeCom takes 1 to "
                                f"{MAX_CUSTOMERS_PER_CALL}")
    checked = post_content(content["text"]["content"] if "text" in content else None, content["attachments"])
    body: SingleMsgTemplate = {"chat_type": "single", "sender": sender, "external_userid": list(external_userids),
                               "attachments": checked["attachments"]}
    if "text" in checked:
        body["text"] = checked["text"]
    return body


class RenderProblemKind(StrEnum):
    template_gone = "template_gone"
    step_gone = "step_gone"
    group_gone = "group_gone"
    no_store = "no_store"
    render_error = "render_error"
    journey_gone = "journey_gone"  # a 1:1 journey message whose journey was removed
    customer_gone = "customer_gone"  # its owner no longer follows the customer


@dataclass(frozen=True)
class RenderProblem:
    """Why a post has no content: a kind that pages translate for the owner, and the English
    detail that goes into the ledger's ``error`` and the log."""

    kind: RenderProblemKind
    detail: str

    def __str__(self) -> str:
        return self.detail


def render_post(post: Any, templates: Mapping[str, SopTemplate], group: Any,
                store: Any) -> tuple[PostContent | None, RenderProblem | None]:
    """A ledger post's content for its group as WeCom payload (text + attachments), or why not."""
    template = templates.get(post.template_id)
    if template is None:
        return None, RenderProblem(RenderProblemKind.template_gone, f"template {post.template_id!r} no longer exists")
    index = next((i for i in range(len(template.steps)) if template.step_key(i) == post.step_key), None)
    if index is None:
        return None, RenderProblem(RenderProblemKind.step_gone,
                                   f"template {post.template_id!r} has no step {post.step_key!r} any more")
    if group is None or group.status != GroupStatus.active:
        return None, RenderProblem(RenderProblemKind.group_gone, "the group is gone")
    if store is None and uses_store_fields(template):
        # Planned before the group lost its store: never send blanks where the store's name goes.
        return None, RenderProblem(RenderProblemKind.no_store,
                                   "the group has no store; the template prints store fields")
    context = build_context(group=group_fields(group), store=store_fields(store), day=post.day,
                            at=template.steps[index].at, template=template)
    try:
        return render_step(template, index, context), None
    except TemplateRenderError as exc:
        return None, RenderProblem(RenderProblemKind.render_error, f"render: {exc}")


def track_links(engine: Engine, post: Any, payload: PostContent, link_base: str, now: dt.datetime) -> PostContent:
    """Point each link attachment at ``/t/{code}`` (one code per post and attachment, kept
    across retries), so a click is counted for this group, post and day. The trade-off for mass
    sends: posts with links differ per group, so they go out one add_msg_template call per group."""
    return track_links_many(engine, [(post, payload)], link_base, now)[0]


def track_links_many(engine: Engine, items: Sequence[tuple[Any, PostContent]], link_base: str,
                     now: dt.datetime) -> list[PostContent]:
    """:func:`track_links` for many posts in one transaction (one INSERT and one SELECT for all of
    them, not a round trip per post); the payloads come back in ``items``' order."""
    link_base = link_base.rstrip("/")
    wanted = [(post, payload) for post, payload in items
              if link_base and any(a["msgtype"] == "link" for a in payload["attachments"])]
    if not wanted:
        return [payload for _, payload in items]
    table, c = TrackedLink.__table__, TrackedLink.__table__.c
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    rows = [dict(code=secrets.token_urlsafe(9), post_id=post.id, position=position, chat_id=post.chat_id,
                 template_id=post.template_id, day=post.day, url=a["link"]["url"], clicks=0, created_at=now)
            for post, payload in wanted for position, a in enumerate(payload["attachments"]) if a["msgtype"] == "link"]
    codes: dict[tuple[int, int], str] = {}
    with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            conn.execute(insert(table).on_conflict_do_nothing(index_elements=["post_id", "position"]),
                         rows[i:i + 1000])
        ids = sorted({post.id for post, _ in wanted})
        for i in range(0, len(ids), 1000):
            for r in conn.execute(select(c.post_id, c.position, c.code).where(c.post_id.in_(ids[i:i + 1000]))):
                codes[(r.post_id, r.position)] = r.code
    out: list[PostContent] = []
    for post, payload in items:
        if not any((post.id, position) in codes for position in range(len(payload["attachments"]))):
            out.append(payload)
            continue
        attachments: list[Attachment] = [
            {**a, "link": {**a["link"], "url": f"{link_base}/t/{codes[(post.id, position)]}"}}
            if a["msgtype"] == "link" else a
            for position, a in enumerate(payload["attachments"])]
        out.append({**payload, "attachments": attachments})
    return out


@dataclass(frozen=True)
class _CallOutcome:
    """What one add_msg_template batch came to on WeCom's side; the ledger is written from it in
    the job's own thread (the calls overlap, the writes don't compete for connections)."""

    kind: str  # created | retry | failed | refused
    result: Mapping[str, Any] | None = None
    errcode: int | None = None
    error: str = ""


class SopSender:
    def __init__(
        self,
        engine: Engine,
        client: SopSendAPI,
        templates: Callable[[], dict[str, SopTemplate]],
        *,
        tz: dt.tzinfo,
        link_base: str = "",
        clock: Callable[[], dt.datetime] = utcnow,
        journeys: Callable[[], Mapping[str, Any]] | None = None,
        concurrency: int = SEND_CONCURRENCY,
        rate: RateLimiter | None = None,
    ):
        self.engine, self.client, self.templates, self.tz, self.clock = engine, client, templates, tz, clock
        # add_msg_template calls one send() keeps in flight at once (sop.send_concurrency).
        self.concurrency = max(1, int(concurrency))
        # Paces add_msg_template under WeCom's per-minute limit: this process's own by default; give
        # every worker process the same Redis-backed limiter (scrm.layers.tagsync.RedisRateLimiter).
        self.rate: RateLimiter = rate if rate is not None else LocalRateLimiter(ADD_MSG_TEMPLATE_PER_MINUTE)
        # The journeys on disk by id (scrm.journeys.jobs.journeys_loader): 1:1 journey messages.
        self.journeys = journeys
        # Where tracked links point: web.public_url; empty sends links untracked.
        self.link_base = link_base.rstrip("/")

    # -- sending --------------------------------------------------------------------------------
    def send(self, post_ids: list[int]) -> dict[str, int]:
        """Send the given posts that are still ``sending``; returns counts by outcome. Mass sends of
        one sender and content go out together (up to 2,000 chats a call), and up to
        ``concurrency`` add_msg_template calls are in flight at once."""
        from scrm.journeys.content import employee_names, load_recipients

        table, c = SopPost.__table__, SopPost.__table__.c
        with self.engine.connect() as conn:
            posts = conn.execute(select(table).where(c.id.in_(post_ids), c.status == PostStatus.sending)).all()
            to_customers = [p for p in posts if p.audience == Audience.customer]
            recipients = load_recipients(conn, (p.chat_id for p in to_customers))
            owners = employee_names(conn, (p.sender for p in to_customers))
            chats = {p.chat_id for p in posts if p.audience != Audience.customer}
            groups = {g.chat_id: g for g in conn.execute(
                select(CustomerGroup.__table__).where(CustomerGroup.__table__.c.chat_id.in_(chats)))}
            codes = {g.store_code for g in groups.values() if g.store_code}
            stores = {s.code: s for s in conn.execute(
                select(Store.__table__).where(Store.__table__.c.code.in_(codes)))} if codes else {}
        outcome: dict[str, int] = defaultdict(int)
        templates = self.templates()
        journeys = self.journeys() if to_customers and self.journeys is not None else {}
        rendered: list[tuple[Row, PostContent]] = []
        failed: dict[str, list[int]] = defaultdict(list)  # error -> ids: one UPDATE per reason
        for p in posts:
            if p.audience == Audience.customer:
                payload, error = self._render_journey(p, journeys, recipients, owners)
            else:
                payload, error = self._render(p, templates, groups, stores)
            if payload is None:
                failed[str(error)].append(p.id)
                continue
            rendered.append((p, payload))
        for reason, ids in failed.items():
            self._finish(ids, status=PostStatus.failed, error=reason)
            outcome["failed"] += len(ids)
        rendered = list(zip((p for p, _ in rendered), self._track_links_many(rendered), strict=True))
        batches: dict[tuple[str, str, str], tuple[PostContent, list[Row]]] = {}
        owner_tasks: list[int] = []
        for p, payload in rendered:
            if p.channel == Channel.group_robot.value:
                status = self._robot_send(p, payload, groups.get(p.chat_id))
                outcome[status] += 1
                continue
            if p.channel != Channel.mass_send.value:  # claim_due never hands owner tasks to a worker
                owner_tasks.append(p.id)
                continue
            key = (p.audience, p.sender, json.dumps(payload, sort_keys=True, ensure_ascii=False))
            batches.setdefault(key, (payload, []))[1].append(p)
        if owner_tasks:
            self._finish(owner_tasks, status=PostStatus.due)
            outcome["due"] += len(owner_tasks)
        calls: list[tuple[str, PostContent, list[Row]]] = []
        for (audience, sender, _), (payload, batch) in batches.items():
            size = MAX_CUSTOMERS_PER_CALL if audience == Audience.customer else MAX_CHATS_PER_CALL
            calls += [(sender, payload, batch[i:i + size]) for i in range(0, len(batch), size)]
        for status, n in self._send_calls(calls).items():
            outcome[status] += n
        return dict(outcome)

    def _send_calls(self, calls: list[tuple[str, PostContent, list[Row]]]) -> dict[str, int]:
        """Make the add_msg_template calls, at most ``concurrency`` at once, and write each one's
        outcome to the ledger here, in the job's thread, as it comes back."""
        outcome: dict[str, int] = defaultdict(int)
        if not calls:
            return outcome
        if len(calls) == 1 or self.concurrency == 1:
            for sender, payload, batch in calls:
                result = self._guarded_call(sender, payload, batch)
                for status, n in self._apply_call(sender, payload, batch, result).items():
                    outcome[status] += n
            return outcome
        pending: dict[Future, tuple[str, PostContent, list[Row]]] = {}
        queue = list(reversed(calls))
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(calls)),
                                thread_name_prefix="sop-send") as pool:
            while queue or pending:
                while queue and len(pending) < self.concurrency:
                    call = queue.pop()
                    pending[pool.submit(self._guarded_call, *call)] = call
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    sender, payload, batch = pending.pop(future)
                    for status, n in self._apply_call(sender, payload, batch, future.result()).items():
                        outcome[status] += n
        return outcome

    def _render(self, post: Row, templates: Mapping[str, SopTemplate], groups: Mapping[str, Any],
                stores: Mapping[str, Any]) -> tuple[PostContent | None, RenderProblem | None]:
        group = groups.get(post.chat_id)
        store = stores.get(group.store_code) if group is not None and group.store_code else None
        return render_post(post, templates, group, store)

    def _render_journey(self, post: Row, journeys: Mapping[str, Any], recipients: Mapping[str, Any],
                        owners: Mapping[str, str]) -> tuple[PostContent | None, RenderProblem | None]:
        from scrm.journeys.content import MessageProblem, render_message

        if self.journeys is None:
            return None, RenderProblem(RenderProblemKind.journey_gone, "the sender was given no journeys")
        try:
            return render_message(post, journeys, recipients.get(post.chat_id),
                                  owners.get(post.sender, post.sender)), None
        except MessageProblem as exc:
            return None, RenderProblem(RenderProblemKind(exc.kind), str(exc))

    def _track_links_many(self, items: list[tuple[Row, PostContent]]) -> list[PostContent]:
        return track_links_many(self.engine, items, self.link_base, self.clock())

    def _robot_send(self, post: Row, payload: PostContent, group: Any) -> str:
        """Post through the group's robot: the text, then the links as news cards
        (``messages.robot_messages``). Robots can't send mini-program cards; those are left out
        (lint can't know which groups have robots)."""
        key = group.robot_webhook_key if group is not None else None
        if not key:  # the robot was removed since the post was claimed: the owner sends it instead
            self._finish([post.id], status=PostStatus.due)
            return "due"
        messages = robot_messages(payload)
        delivered = 0
        try:
            for message in messages:
                self.client.send_robot_message(key, message)
                delivered += 1
        except WeComAPIError as exc:
            if delivered:  # part of the post is in the group: never send it again, say what is missing
                self._finish([post.id], status=PostStatus.sent, content=payload, sent_by="group_robot",
                             sent_at=self.clock(), errcode=exc.errcode,
                             error=f"robot: the link card was not sent ({exc.errmsg})"[:500])
                return "sent"
            if isinstance(exc, TransportError):  # WeCom may have posted it: at most once, so no retry
                self._finish([post.id], status=PostStatus.failed, errcode=exc.errcode,
                             error="robot: no answer from WeCom; not retried, to never post twice")
                return "failed"
            if isinstance(exc, (RateLimited, SystemBusy)):  # refused: safe to try again in its window
                return "retry" if self._retry_later([post], f"robot: {type(exc).__name__}").get("retry") else "failed"
            self._finish([post.id], status=PostStatus.failed, errcode=exc.errcode, error=f"robot: {exc.errmsg}"[:500])
            return "failed"
        self._finish([post.id], status=PostStatus.sent, content=payload, sent_by="group_robot", sent_at=self.clock())
        log.info("sop_robot_sent", chat_id=post.chat_id, post_id=post.id, messages=len(messages))
        return "sent"

    def _guarded_call(self, sender: str, payload: PostContent, batch: list[Row]) -> _CallOutcome:
        """_mass_call, with anything unexpected taken as "WeCom may have created it": the batch is
        retried later (looked for first), and the other calls of the job are still recorded, so a
        failed job retried by the queue never sends them again."""
        try:
            return self._mass_call(sender, payload, batch)
        except Exception as exc:  # noqa: BLE001 - one batch's surprise must not lose the others' outcomes
            log.exception("sop_mass_send_unexpected", sender=sender, chats=len(batch), error=type(exc).__name__)
            return _CallOutcome("retry", error=f"unexpected: {type(exc).__name__}")

    def _mass_call(self, sender: str, payload: PostContent, batch: list[Row]) -> _CallOutcome:
        """One batch's add_msg_template on WeCom's side only (runs on the send pool): never twice
        for a task WeCom may already have created (a retried batch, a timeout)."""
        single = batch[0].audience == Audience.customer
        try:
            body = single_msg_template(sender, [p.chat_id for p in batch], payload) if single \
                else group_msg_template(sender, [p.chat_id for p in batch], payload)
        except MessageLimitError as exc:  # render refuses these first; never send a post cut short
            return _CallOutcome("refused", error=f"payload: {exc}")
        started = self.clock()
        chats = [p.chat_id for p in batch]
        if any(p.attempts > 1 for p in batch):  # tried before: WeCom may have created the task
            # Since the post's day began: a retry moved scheduled_for past the first attempt.
            since = min(p.window_ends_at for p in batch) - dt.timedelta(days=1)
            try:
                found = self._find_created(sender, payload, since, single=single, chats=chats)
            except WeComAPIError as exc:  # can't tell whether it went out: never risk a second task
                return _CallOutcome("retry", error=f"lookup: errcode {exc.errcode}")
            if found is not None:
                return _CallOutcome("created", found)
        self.rate.acquire()
        try:
            result = self.client.add_msg_template(body)
        except TransportError:
            try:
                found = self._find_created(sender, payload, started, single=single, chats=chats)
            except WeComAPIError:
                found = None  # retried later, and looked for again first
            if found is None:
                return _CallOutcome("retry", error="transport")
            result = found
        except (RateLimited, SystemBusy) as exc:
            return _CallOutcome("retry", error=f"errcode {exc.errcode}")
        except WeComAPIError as exc:
            return _CallOutcome("failed", errcode=exc.errcode, error=exc.errmsg)
        return _CallOutcome("created", result)

    def _apply_call(self, sender: str, payload: PostContent, batch: list[Row], done: _CallOutcome) -> dict[str, int]:
        """The ledger after one batch's call: sent (and refused chats failed), back to planned for
        a later try, or failed."""
        ids = [p.id for p in batch]
        if done.kind == "created":
            assert done.result is not None
            return self._record(sender, payload, batch, done.result)
        if done.kind == "retry":
            return self._retry_later(batch, done.error)
        self._finish(ids, status=PostStatus.failed, errcode=done.errcode, error=done.error[:500])
        if done.kind == "refused":
            log.warning("sop_mass_send_refused", sender=sender, chats=len(ids), error=done.error)
        else:
            log.warning("sop_mass_send_failed", sender=sender, chats=len(ids), errcode=done.errcode)
        return {"failed": len(ids)}

    def _record(self, sender: str, payload: PostContent, batch: list[Row],
                result: Mapping[str, Any]) -> dict[str, int]:
        failed = set(result.get("fail_list") or [])
        ok = [p.id for p in batch if p.chat_id not in failed]
        bad = [p.id for p in batch if p.chat_id in failed]
        now = self.clock()
        if ok:
            self._finish(ok, status=PostStatus.sent, msgid=result["msgid"], content=payload, sent_by=sender,
                         sent_at=now)
        if bad:
            refused = ("WeCom refused the customer (fail_list: not their follower)"
                       if batch[0].audience == Audience.customer else "WeCom refused the group (fail_list)")
            self._finish(bad, status=PostStatus.failed, error=refused, msgid=result["msgid"])
        log.info("sop_mass_send_created", sender=sender, msgid=result["msgid"], chats=len(ok), refused=len(bad))
        return {"sent": len(ok), "failed": len(bad)}

    def _find_created(self, sender: str, payload: PostContent, since: dt.datetime, *,
                      single: bool = False, chats: Sequence[str] = ()) -> dict[str, Any] | None:
        """After a timeout or before a retry: did WeCom create this batch's task anyway? A task of
        ``sender`` since ``since`` with the same content whose targets include ``chats`` (another
        batch of the owner's with the same content has other chats), answered like
        add_msg_template: msgid, and as fail_list the chats the task does not hold. Every page of
        the listing is read; None when there is none; raises WeComAPIError when WeCom can't say."""
        start = int(since.timestamp()) - 60
        end = int(self.clock().timestamp()) + 60
        cursor = ""
        candidates: list[str] = []
        for _ in range(LOOKUP_PAGES):
            listing = self.client.get_groupmsg_list_v2(
                chat_type="single" if single else "group", start_time=start, end_time=end, creator=sender,
                filter_type=2, limit=100, **({"cursor": cursor} if cursor else {}))
            for item in listing.get("group_msg_list") or []:
                if item.get("text") == payload.get("text") and \
                        (item.get("attachments") or []) == payload["attachments"] and item.get("msgid"):
                    candidates.append(str(item["msgid"]))
            cursor = listing.get("next_cursor") or ""
            if not cursor:
                break
        for msgid in reversed(candidates):  # the newest first
            targets = self._targets(msgid, sender) if chats else set()
            if not chats or targets & set(chats):
                return {"msgid": msgid, "fail_list": [c for c in chats if c not in targets]}
        return None

    def _targets(self, msgid: str, sender: str) -> set[str]:
        """The chats (or customers) a task of ``sender`` was created for, confirmed or not."""
        return {str(item.get("chat_id") or item.get("external_userid")) for item in self._send_list(msgid, sender)}

    def _send_list(self, msgid: str, userid: str) -> Iterator[dict[str, Any]]:
        """Every page of get_groupmsg_send_result: one entry per chat (group send) or customer
        (1:1 send) of ``userid``'s part of the task."""
        cursor = ""
        while True:
            page = self.client.get_groupmsg_send_result(msgid, userid, cursor=cursor)
            yield from page.get("send_list") or []
            cursor = page.get("next_cursor") or ""
            if not cursor:
                return

    def _retry_later(self, batch: list[Row], reason: str) -> dict[str, int]:
        """Back to ``planned`` a little later if the post's window allows, else failed."""
        now = self.clock()
        again: list[int] = []
        give_up: list[int] = []
        for p in batch:
            (again if now + RETRY_AFTER < p.window_ends_at else give_up).append(p.id)
        c = SopPost.__table__.c
        with self.engine.begin() as conn:
            if again:
                conn.execute(update(SopPost.__table__).where(c.id.in_(again), c.status == PostStatus.sending)
                             .values(status=PostStatus.planned, scheduled_for=now + RETRY_AFTER, error=reason,
                                     updated_at=now))
        if give_up:
            self._finish(give_up, status=PostStatus.failed, error=f"{reason}; window ended")
        log.warning("sop_send_retry_later", reason=reason, retry=len(again), failed=len(give_up))
        return {"retry": len(again), "failed": len(give_up)}

    def _finish(self, ids: list[int], *, status: PostStatus, **values: Any) -> None:
        c = SopPost.__table__.c
        with self.engine.begin() as conn:
            conn.execute(update(SopPost.__table__).where(c.id.in_(ids), c.status == PostStatus.sending)
                         .values(status=status, updated_at=self.clock(), **values))

    # -- delivery results -------------------------------------------------------------------------
    def poll_results(self, *, lookback: dt.timedelta = dt.timedelta(days=3)) -> dict[str, int]:
        """Read what each group received for mass sends still waiting for their owner."""
        table, c = SopPost.__table__, SopPost.__table__.c
        now = self.clock()
        with self.engine.connect() as conn:
            waiting = conn.execute(
                select(c.id, c.chat_id, c.msgid, c.sender, c.audience).where(
                    c.channel == Channel.mass_send.value, c.status == PostStatus.sent, c.msgid.is_not(None),
                    c.sent_at >= now - lookback)
            ).all()
        by_msg: dict[str, list[Row]] = defaultdict(list)
        for row in waiting:
            by_msg[row.msgid].append(row)
        counts: dict[str, int] = defaultdict(int)
        for msgid, rows in by_msg.items():
            try:
                results = self._send_results(msgid, {r.sender for r in rows})
            except WeComAPIError as exc:
                log.warning("sop_poll_failed", msgid=msgid, errcode=exc.errcode)
                continue
            with self.engine.begin() as conn:
                for r in rows:
                    status, send_time = results.get(r.chat_id, (0, 0))
                    if status == 0:
                        continue
                    values: dict[str, Any] = {"updated_at": now}
                    if status == 1:
                        values.update(status=PostStatus.confirmed,
                                      confirmed_at=dt.datetime.fromtimestamp(send_time or now.timestamp(),
                                                                             dt.UTC))
                    elif status == 3:
                        values.update(status=PostStatus.over_quota, errcode=3, error=(
                            "the customer already received another mass message today (WeCom quota)"
                            if r.audience == Audience.customer else
                            "the group already received another mass message (WeCom quota)"))
                    else:
                        values.update(status=PostStatus.failed, errcode=status, error=(
                            "WeCom could not deliver to the customer (not their follower any more)"
                            if r.audience == Audience.customer else "WeCom could not deliver to the group"))
                    conn.execute(update(table).where(c.id == r.id, c.status == PostStatus.sent).values(**values))
                    counts[values["status"]] += 1
        return dict(counts)

    def _send_results(self, msgid: str, senders: set[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        cursor = ""
        confirmed: set[str] = set()
        while True:
            page = self.client.get_groupmsg_task(msgid, cursor=cursor)
            confirmed |= {t["userid"] for t in page.get("task_list") or [] if t.get("status") == 2}
            cursor = page.get("next_cursor") or ""
            if not cursor:
                break
        for userid in senders & confirmed:
            for item in self._send_list(msgid, userid):
                # A group send answers by chat_id, a 1:1 send (chat_type single) by external_userid.
                target = item.get("chat_id") or item.get("external_userid")
                if target:
                    out[target] = (int(item.get("status", 0)), int(item.get("send_time") or 0))
        return out

"""Apply one inbox row: the worker's job. Idempotent, so redelivery changes nothing twice.

API calls happen first, outside any transaction (no DB lock held over HTTP); then one transaction
claims the row (status pending -> done) and writes. A second worker with the same row finds it
done and writes nothing.

Some WeCom refusals are answers, not outages: a chat WeCom does not have (40050, 49008) or an
external_userid it will not describe (40096). Retrying cannot change them, so the job applies
what the event itself says, ends with the row done and the refusal in ``last_error``, and logs
one warning (no traceback, no retry).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.contacts import service as contacts
from scrm.contacts.models import FollowStatus
from scrm.db import utcnow
from scrm.groups import service as groups
from scrm.groups.models import CustomerGroup
from scrm.logs import get_logger
from scrm.tags import service as tags
from scrm.wecom import events as ev
from scrm.wecom.api import WeComAPI
from scrm.wecom.errors import WeComAPIError, WelcomeCodeUsed

log = get_logger(__name__)
T = CallbackInbox.__table__
G = CustomerGroup.__table__
CHAT_FETCH = ("create", "update")  # chat events whose group is re-read from WeCom

FETCH_CONTACT = {"add_external_contact", "add_half_external_contact", "edit_external_contact", "msg_audit_approved"}
ADD_CONTACT = {"add_external_contact", "add_half_external_contact"}
# externalcontact/get refusals that end the job: 40096 invalid external_userid (the event's own
# fields are stored), 84061 not a contact of any member (nothing to store).
INVALID_EXTERNAL_USERID, NOT_EXTERNAL_CONTACT = 40096, 84061


class Cost:
    """Where one event's time went, in ms: WeCom's round trips and the database (the rest of
    ``total`` is parsing, hooks and logging). Logged on ``callback_applied`` with the time the
    message waited in the queue, so a slow worker says whether WeCom, PostgreSQL or the queue is
    the cause."""

    __slots__ = ("wecom", "db", "_kind", "_t0", "started")

    def __init__(self) -> None:
        self.wecom = self.db = 0.0
        self._kind = ""
        self._t0 = 0.0
        self.started = time.perf_counter()

    def __call__(self, kind: str) -> Cost:
        self._kind = kind
        return self

    def __enter__(self) -> Cost:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        ms = (time.perf_counter() - self._t0) * 1000
        if self._kind == "wecom":
            self.wecom += ms
        else:
            self.db += ms

    def fields(self, queued_ms: float | None) -> dict:
        out = {"wecom_ms": round(self.wecom, 1), "db_ms": round(self.db, 1),
               "total_ms": round((time.perf_counter() - self.started) * 1000, 1)}
        if queued_ms is not None:
            out["queued_ms"] = round(queued_ms, 1)
        return out


@dataclass(frozen=True)
class Refused:
    """What a fetch returns when WeCom refused it for good (see the module docstring)."""

    errcode: int
    error: str  # the WeComAPIError's text: path, errcode, errmsg


class Processor:
    def __init__(self, engine: Engine, client: WeComAPI, *, welcome_text: str = "", chat_delay_ms: int = 0,
                 max_attempts: int = 10, router=None,
                 on_customers_changed: Callable[[list[str]], None] | None = None,
                 on_contact_changed: Callable[[list[str]], None] | None = None,
                 on_tag_library_changed: Callable[[], None] | None = None):
        self.max_attempts = max_attempts
        # Called after a contact or group-member event is applied, with the customers it touched
        # (the layering workers re-layer them, debounced). Never raises into the job.
        self.on_customers_changed = on_customers_changed
        # Called after a contact event only (its remark mobiles may have changed: the CRM links
        # calls and SMS waiting on them), so group joins and leaves cost it nothing.
        self.on_contact_changed = on_contact_changed
        # Called after a tag event re-read the corp tag library (rule tags are reconciled).
        self.on_tag_library_changed = on_tag_library_changed
        # Store routing (scrm.routing.router.StoreRouter): store tags, the welcome's group card,
        # live-code rotation. None: plain welcome, no routing.
        self.router = router
        self.engine = engine
        self.client = client
        self.welcome_text = welcome_text
        self.chat_delay_ms = chat_delay_ms

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def process(self, inbox_id: int, *, queued_ms: float | None = None) -> None:
        """Apply one stored callback (a no-op when it is missing or already done). ``queued_ms``:
        how long its message waited in the queue (logged with the event's cost)."""
        cost = Cost()
        stored_version: tuple[str | None] | None = None
        welcome_claimed = False
        with cost("db"), self.engine.connect() as conn:  # Core: one row's two columns, no ORM session
            row = conn.execute(select(T.c.status, T.c.plaintext).where(T.c.id == inbox_id)).first()
            if row is None:
                log.warning("callback_missing", inbox_id=inbox_id)
                return
            if row.status != InboxStatus.pending:
                return
            event = ev.parse_event(row.plaintext)
            if isinstance(event, ev.ChatEvent) and event.change_type in CHAT_FETCH:
                # The group's stored member version, in the same checkout (one pool ping, not two).
                stored_version = conn.execute(select(G.c.member_version).where(G.c.chat_id == event.chat_id)).first()
            elif isinstance(event, ev.ContactEvent) and self._sends_welcome(event):
                # The welcome's claim, committed here before any WeCom call (at most one welcome),
                # on the connection that read the row.
                welcome_claimed = contacts.claim_welcome_on(conn, inbox_id=inbox_id, userid=event.user_id,
                                                            external_userid=event.external_user_id)
        bound = log.bind(inbox_id=inbox_id, event_type=event.event, change_type=event.change_type)
        try:
            fetched = self._fetch(inbox_id, event, cost, stored_version=stored_version,
                                  welcome_claimed=welcome_claimed)
        except WeComAPIError as exc:
            self._note_error(inbox_id, exc)
            bound.warning("callback_fetch_failed", errcode=exc.errcode)
            raise
        with cost("db"), self._session() as s:
            # The claim: only one worker turns the row done (a re-driven row was set back to
            # pending first, so it is applied once more, once).
            claimed = s.connection().execute(
                update(T)
                .where(T.c.id == inbox_id, T.c.status != InboxStatus.done)
                .values(status=InboxStatus.done, done_at=utcnow(), attempts=T.c.attempts + 1, last_error=None)
            ).rowcount
            if not claimed:
                s.rollback()
                return
            note = self._apply(s, inbox_id, event, fetched)
            if note:
                s.connection().execute(update(T).where(T.c.id == inbox_id).values(last_error=note[:500]))
            s.commit()
        if note:
            self._warn_refused(inbox_id, event, fetched, note)
        bound.info("callback_applied", chat_id=getattr(event, "chat_id", None) or None,
                   external_userid=getattr(event, "external_user_id", None) or None, **cost.fields(queued_ms))
        self._after_apply(event, fetched, bound)
        if self.router and isinstance(event, ev.ChatEvent) and fetched != "current":
            try:
                self.router.on_group_changed(event.chat_id)
            except WeComAPIError as exc:  # the scheduled refresh catches up
                bound.warning("store_code_refresh_failed", errcode=exc.errcode)

    def _after_apply(self, event: ev.Event, fetched, bound) -> None:
        """Tell the layering workers which customers an applied event touched. A failure here is
        logged, never raised: the callback is applied, and the nightly pass catches up."""
        try:
            if isinstance(event, ev.TagEvent):
                if self.on_tag_library_changed is not None:
                    self.on_tag_library_changed()
                return
            ids: list[str] = []
            if isinstance(event, ev.ContactEvent) and event.external_user_id:
                ids = [event.external_user_id]
                if self.on_contact_changed is not None:
                    self.on_contact_changed(ids)
            elif isinstance(event, ev.ChatEvent) and fetched != "current":
                # Joins and leaves; an employee's id among them is harmless (only customers are layered).
                ids = list(event.mem_change_list)
            if ids and self.on_customers_changed is not None:
                self.on_customers_changed(ids)
        except Exception as exc:  # noqa: BLE001 - the callback itself is applied; layers catch up nightly
            bound.warning("layer_notify_failed", error=str(exc)[:200])

    @staticmethod
    def _warn_refused(inbox_id: int, event: ev.Event, refused: Refused, note: str) -> None:
        """The one log line of a job WeCom's refusal ended (no traceback: nothing to debug here)."""
        ids = ({"chat_id": event.chat_id} if isinstance(event, ev.ChatEvent) else
               {"userid": getattr(event, "user_id", None), "external_userid": getattr(event, "external_user_id", None)})
        log.warning("callback_ended_by_wecom", corp_id=event.corp_id, inbox_id=inbox_id, errcode=refused.errcode,
                    event_type=event.event, change_type=event.change_type, outcome=note, **ids)

    def _note_error(self, inbox_id: int, exc: Exception) -> None:
        """Count the failure; after max_attempts the row is parked as failed (kept, with its error)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(T)
                .where(T.c.id == inbox_id, T.c.status == InboxStatus.pending)
                .values(
                    attempts=T.c.attempts + 1,
                    last_error=str(exc)[:500],
                    status=case((T.c.attempts + 1 >= self.max_attempts, InboxStatus.failed), else_=T.c.status),
                )
            )

    # -- phase 1: talk to WeCom -------------------------------------------------------------
    def _fetch(self, inbox_id: int, event: ev.Event, cost: Cost, *,
               stored_version: tuple[str | None] | None, welcome_claimed: bool):
        """``stored_version``: for a chat create/update, the group's ``(member_version,)`` row as
        ``process`` read it with the inbox row (None: no group stored).
        ``welcome_claimed``: whether ``process`` claimed the welcome (committed before any call)."""
        if isinstance(event, ev.ContactEvent) and event.change_type in FETCH_CONTACT:
            store = None
            if self.router and event.change_type in ADD_CONTACT:
                with cost("db"):  # one read of the store for the welcome and the store tag
                    store = self.router.store_for(event.state)
            if welcome_claimed and event.welcome_code:
                self._welcome(inbox_id, event, event.welcome_code, cost, store=store)
            if self.router and event.change_type in ADD_CONTACT:
                with cost("wecom"):
                    self.router.on_new_contact(event.user_id, event.external_user_id, event.state, store=store)
            try:
                with cost("wecom"):
                    return self.client.get_external_contact(event.external_user_id)
            except WeComAPIError as exc:
                if exc.errcode in (INVALID_EXTERNAL_USERID, NOT_EXTERNAL_CONTACT):
                    return Refused(exc.errcode, str(exc))
                raise
        if isinstance(event, ev.ChatEvent) and event.change_type in CHAT_FETCH:
            if stored_version is not None:  # the group is stored
                version = stored_version[0]
                if event.cur_mem_ver and version == event.cur_mem_ver:
                    return "current"  # already applied (out-of-order or redelivered)
                if event.last_mem_ver and version not in (None, event.last_mem_ver):
                    log.info("group_resync", chat_id=event.chat_id, stored=version,
                             last_mem_ver=event.last_mem_ver)
            if self.chat_delay_ms:
                time.sleep(self.chat_delay_ms / 1000)
            try:
                with cost("wecom"):
                    return self.client.get_group_chat(event.chat_id)
            except WeComAPIError as exc:
                if exc.errcode in groups.MISSING_CHAT_ERRCODES:
                    return Refused(exc.errcode, str(exc))
                raise
        if isinstance(event, ev.TagEvent):
            with cost("wecom"):
                return self.client.get_corp_tags()
        return None

    @staticmethod
    def _sends_welcome(event: ev.Event) -> bool:
        return (isinstance(event, ev.ContactEvent) and bool(event.welcome_code)
                and event.change_type in ("add_external_contact", "add_half_external_contact"))

    def _welcome(self, inbox_id: int, event: ev.ContactEvent, welcome_code: str, cost: Cost, *,
                 store=None) -> None:
        """Send the welcome ``process`` claimed. ``store``: the router's ``store_for(event.state)``,
        read by ``_fetch``."""
        age = time.time() - event.create_time
        factory = self._session
        if age > contacts.WELCOME_WINDOW_SECONDS:
            with cost("db"):
                contacts.record_welcome(factory, inbox_id, "expired")
            return
        text, attachments = (self.router.welcome_for(event.state, store=store) if self.router
                             else (self.welcome_text, []))
        outcome, errcode = "sent", None
        try:
            with cost("wecom"):
                self.client.send_welcome_msg(welcome_code, text=text, attachments=attachments or None)
        except WelcomeCodeUsed as exc:
            outcome, errcode = "refused", exc.errcode
        except WeComAPIError as exc:
            outcome, errcode = "failed", exc.errcode
            log.warning("welcome_failed", inbox_id=inbox_id, errcode=exc.errcode)
        with cost("db"):
            contacts.record_welcome(factory, inbox_id, outcome, errcode)

    # -- phase 2: write -------------------------------------------------------------------
    def _apply(self, s: Session, inbox_id: int, event: ev.Event, fetched) -> str | None:
        """Write what the event and its fetch say; returns a note for ``last_error`` when WeCom's
        refusal limited what could be applied."""
        at = datetime.fromtimestamp(event.create_time, UTC)
        if isinstance(event, ev.ContactEvent):
            if event.change_type in FETCH_CONTACT:
                if isinstance(fetched, Refused):
                    return self._apply_contact_refused(s, event, fetched, at)
                if fetched:
                    contacts.apply_contact_detail(s, fetched, as_of=at)
            elif event.change_type == "del_external_contact":
                status = (FollowStatus.transferred if event.source == "DELETE_BY_TRANSFER"
                          else FollowStatus.deleted_by_employee)
                contacts.mark_removed(s, event.user_id, event.external_user_id, status=status, at=at)
            elif event.change_type == "del_follow_user":
                contacts.mark_removed(s, event.user_id, event.external_user_id,
                                      status=FollowStatus.deleted_by_customer, at=at)
                contacts.raise_churn_alert(s, inbox_id=inbox_id, kind="customer_deleted_employee",
                                           userid=event.user_id, external_userid=event.external_user_id, at=at)
            elif event.change_type == "transfer_fail":
                contacts.raise_churn_alert(s, inbox_id=inbox_id, kind="transfer_failed", userid=event.user_id,
                                           external_userid=event.external_user_id, at=at, detail=event.fail_reason)
        elif isinstance(event, ev.ChatEvent):
            if isinstance(fetched, Refused):
                group_status = groups.mark_missing(s, event.chat_id, fetched.errcode)
                what = f"group marked {group_status}" if group_status else "group not stored, nothing to mark"
                return f"{fetched.error}; {what}; job ended without retry"
            if event.change_type == "dismiss":
                groups.mark_dismissed(s, event.chat_id)
            elif isinstance(fetched, dict):
                groups.apply_group_chat(s, fetched, quit_scene=event.quit_scene)
        elif isinstance(event, ev.TagEvent):
            tags.apply_tag_library(s, fetched or [])
        else:
            log.info("callback_ignored", inbox_id=inbox_id, event_type=event.event)
        return None

    @staticmethod
    def _apply_contact_refused(s: Session, event: ev.ContactEvent, refused: Refused, at: datetime) -> str:
        if refused.errcode != INVALID_EXTERNAL_USERID:  # 84061: WeCom says there is no relation
            return f"{refused.error}; nothing stored"
        contacts.apply_contact_event(s, userid=event.user_id, external_userid=event.external_user_id,
                                     state=event.state, at=at, added=event.change_type in ADD_CONTACT)
        state = f" state={event.state}" if event.state else ""
        relation = f"{event.user_id} -> {event.external_user_id}{state}"
        return f"{refused.error}; stored from the event only: follow relation {relation}"

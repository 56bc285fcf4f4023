"""The sandbox plays the people: customers, employees and admins act, state changes, and the
matching callback is posted (reference §2). Every action returns what it did and how the
callback delivery went.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scrm.sandbox.callbacks import CallbackPoster, Delivery
from scrm.sandbox.state import CorpState, GroupMember, SandboxError, _rand
from scrm.wecom.crypto import CallbackCrypto
from scrm.wecom.events import CHAT, CONTACT, TAG, render_event


class ActionError(SandboxError):
    """A scripted action that cannot happen (e.g. every group of a join way is full)."""


@dataclass
class ActionResult:
    data: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def delivered(self) -> bool:
        return all(d.delivered for d in self.deliveries)

    def as_dict(self) -> dict:
        return {**self.data, "deliveries": [d.as_dict() for d in self.deliveries]}


class Sandbox(CorpState):
    """A fake WeCom corp: API state (``CorpState``) + scripted user actions + callback posting."""

    def __init__(
        self,
        corp_id: str = "ww0000sandboxcorp",
        secret: str = "sandbox-secret",
        *,
        callback_token: str = "",
        encoding_aes_key: str = "",
        callback_url: str = "",
        callback_http: httpx.Client | None = None,
        callback_timeout: float = 5.0,
        callback_tries: int = 3,
        agent_id: int | None = 1000002,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ):
        super().__init__(corp_id, secret, clock=clock, **kwargs)
        crypto = (CallbackCrypto(callback_token, encoding_aes_key, corp_id)
                  if callback_token and encoding_aes_key else None)
        self.poster = CallbackPoster(crypto, callback_url, http=callback_http, timeout=callback_timeout,
                                     tries=callback_tries, agent_id=agent_id)
        self.agent_id = agent_id
        # Post every event twice (the second is a WeCom-style retry of the same plaintext).
        self.deliver_twice = False

    @classmethod
    def from_settings(cls, settings, *, state_file: Path | str | None = None, seed: bool = True,
                      **overrides: Any) -> Sandbox:
        """The sandbox ``scrm run`` / ``scrm sandbox`` serve. With ``state_file`` the corp is
        durable: loaded from that file when it exists (``SandboxStateError`` naming the file if it
        cannot be used; it is never reseeded over), else seeded with the demo chain (``seed``)
        and saved there; every later change is saved too. ``sandbox.demo`` is what the seed built."""
        w, s = settings.wecom, settings.sandbox
        opts: dict[str, Any] = dict(
            callback_token=w.callback_token.get_secret_value(),
            encoding_aes_key=w.encoding_aes_key.get_secret_value(),
            callback_url=settings.callback_url(),
            callback_timeout=s.callback_timeout_seconds,
            callback_tries=s.callback_tries,
            agent_id=w.agent_id,
            token_expires_in=s.token_expires_in,
            rate_limit_per_minute=s.rate_limit_per_minute,
            qr_base_url=f"http://{s.host}:{s.port}/sandbox/qr/",
        )
        opts.update(overrides)
        sandbox = cls(w.corp_id, w.secret.get_secret_value() or "sandbox-secret", **opts)
        if state_file is not None:
            from scrm.sandbox.persist import load_or_seed

            load_or_seed(sandbox, state_file, seed=seed)
        return sandbox

    # -- callbacks -------------------------------------------------------------------------------
    @property
    def callback_url(self) -> str:
        return self.poster.url

    @callback_url.setter
    def callback_url(self, url: str) -> None:
        self.poster.url = url

    def hold_callbacks(self, hold: bool = True) -> None:
        self.poster.hold = hold

    def flush_callbacks(self, concurrency: int = 1) -> list[Delivery]:
        return self.poster.flush(concurrency)

    def redeliver(self, index: int = -1) -> Delivery:
        return self.poster.redeliver(index)

    @property
    def callbacks(self) -> list[Delivery]:
        return self.poster.log

    def _fire(self, events: list[tuple[str, str, dict]]) -> list[Delivery]:
        """Render and post events; called with the state lock released."""
        out = []
        for event, change_type, fields in events:
            plain = render_event(self.corp_id, event, change_type, self.now(), **fields)
            out.append(self.poster.post(plain))
            if self.deliver_twice:  # WeCom-style retry: same plaintext, re-encrypted; respects hold
                out.append(self.poster.post(plain))
        return out

    def _result(self, data: dict, events: list[tuple[str, str, dict]]) -> ActionResult:
        """Every action changed the corp: save it (when persisting), then post its callbacks."""
        with self.lock:
            self._changed()
        self.flush()
        return ActionResult(data, self._fire(events))

    # -- customers and employees -----------------------------------------------------------------
    def _customer_adds(self, userid: str, external_userid: str | None, name: str, state: str, add_way: int,
                       welcome_code: bool, **customer_kw: Any) -> tuple[dict, list]:
        m = self.member(userid)
        if not m.customer_contact:
            raise ActionError(41054, f"{userid} has no customer-contact permission")
        if external_userid:
            c = self.customer(external_userid)
        else:
            c = self.add_customer(name, **customer_kw)
        existing = self.follows.get((userid, c.external_userid))
        if existing and not existing.deleted_by_customer:
            return {"external_userid": c.external_userid, "userid": userid, "new_customer": False,
                    "already_contact": True, "welcome_code": None}, []
        self.add_follow(userid, c.external_userid, state=state, add_way=add_way, oper_userid=c.external_userid)
        code = self.issue_welcome_code(userid, c.external_userid) if welcome_code else None
        fields = {"UserID": userid, "ExternalUserID": c.external_userid, "State": state or None, "WelcomeCode": code}
        data = {"external_userid": c.external_userid, "userid": userid, "new_customer": external_userid is None,
                "already_contact": False, "welcome_code": code, "state": state}
        return data, [(CONTACT, "add_external_contact", fields)]

    def scan_contact_way(self, config_id: str, *, external_userid: str | None = None, name: str = "微信用户",
                         userid: str | None = None, welcome_code: bool = True, **customer_kw: Any) -> ActionResult:
        """A customer scans a 联系我 QR code: new (or existing) customer + follow relation with the
        way's state, add_way 1, and an add_external_contact callback with State and WelcomeCode."""
        with self.lock:
            way = self.contact_way(config_id)
            if userid is None:
                if not way.user:
                    raise ActionError(41044, "contact way has no users")
                userid = way.user[way.next_user % len(way.user)]
                way.next_user += 1
            elif userid not in way.user:
                raise ActionError(40058, f"{userid} is not on contact way {config_id}")
            data, events = self._customer_adds(userid, external_userid, name, way.state, 1, welcome_code,
                                               **customer_kw)
            data["config_id"] = config_id
        return self._result(data, events)

    def add_employee(self, userid: str, *, external_userid: str | None = None, name: str = "微信用户",
                     state: str = "", add_way: int = 2, welcome_code: bool = True, **customer_kw: Any) -> ActionResult:
        """A customer adds an employee directly (phone search by default, add_way 2)."""
        with self.lock:
            data, events = self._customer_adds(userid, external_userid, name, state, add_way, welcome_code,
                                               **customer_kw)
        return self._result(data, events)

    def customer_deletes_employee(self, external_userid: str, userid: str) -> ActionResult:
        """The customer deletes the member: a one-way relation remains (del_follow_user)."""
        with self.lock:
            f = self.follow(userid, external_userid)
            f.deleted_by_customer = True
        return self._result({"userid": userid, "external_userid": external_userid},
                            [(CONTACT, "del_follow_user", {"UserID": userid, "ExternalUserID": external_userid})])

    def employee_deletes_customer(self, userid: str, external_userid: str, *,
                                  by_transfer: bool = False) -> ActionResult:
        """The member deletes the customer: the relation is gone (del_external_contact)."""
        with self.lock:
            self.follow(userid, external_userid)
            del self.follows[(userid, external_userid)]
        fields = {"UserID": userid, "ExternalUserID": external_userid,
                  "Source": "DELETE_BY_TRANSFER" if by_transfer else None}
        return self._result({"userid": userid, "external_userid": external_userid},
                            [(CONTACT, "del_external_contact", fields)])

    def employee_edits_customer(self, userid: str, external_userid: str, *, remark: str | None = None,
                                description: str | None = None, add_tags=(), remove_tags=(),
                                remark_mobiles: list[str] | None = None) -> ActionResult:
        """The member edits remark/description/remark mobiles (as typed: WeCom keeps them as given)/
        corp tags in the client (edit_external_contact)."""
        with self.lock:
            f = self.follow(userid, external_userid)
            for t in list(add_tags) + list(remove_tags):
                self.tag(t)
            if remark is not None:
                f.remark = remark
            if description is not None:
                f.description = description
            if remark_mobiles is not None:
                f.remark_mobiles = list(remark_mobiles)
            f.tag_ids = [t for t in f.tag_ids if t not in remove_tags] + [t for t in add_tags if t not in f.tag_ids]
            data = {"userid": userid, "external_userid": external_userid, "tag_ids": list(f.tag_ids),
                    "remark": f.remark}
        return self._result(data, [(CONTACT, "edit_external_contact",
                                    {"UserID": userid, "ExternalUserID": external_userid})])

    # -- tags (admin console) --------------------------------------------------------------------
    def admin_create_tag(self, name: str, *, group_name: str | None = None,
                         group_id: str | None = None) -> ActionResult:
        """An admin adds a tag in the console; a new group fires one tag_group event."""
        with self.lock:
            tag, grp, created = self.create_tag(name, group_name=group_name, group_id=group_id)
        if created:
            ev = {"Id": grp.group_id, "TagType": "tag_group"}
        else:
            ev = {"Id": tag.id, "TagType": "tag"}
        return self._result({"tag_id": tag.id, "group_id": grp.group_id, "group_created": created},
                            [(TAG, "create", ev)])

    def admin_edit_tag(self, id: str, *, name: str) -> ActionResult:
        """An admin renames a tag or a group in the console: one update event (reference §2.3)."""
        with self.lock:
            if id in self.tags or id in self.tag_groups:
                self.check_tag_rename(id, name)
            if id in self.tags:
                self.tags[id].name, kind = name, "tag"
            elif id in self.tag_groups:
                self.tag_groups[id].group_name, kind = name, "tag_group"
            else:
                raise ActionError(40068, f"invalid tag id: {id}")
        return self._result({"id": id, "tag_type": kind}, [(TAG, "update", {"Id": id, "TagType": kind})])

    def admin_delete_tag(self, id: str) -> ActionResult:
        """Deletes a tag or a whole group (no per-tag events for a group's tags, as in WeCom)."""
        with self.lock:
            if id in self.tags:
                kind = "tag"
                removed = self.delete_tags(tag_ids=[id])
            elif id in self.tag_groups:
                kind = "tag_group"
                removed = self.delete_tags(group_ids=[id])
            else:
                raise ActionError(40068, f"invalid tag id: {id}")
        return self._result({"id": id, "tag_type": kind, "removed": removed},
                            [(TAG, "delete", {"Id": id, "TagType": kind})])

    # -- groups ------------------------------------------------------------------------------------
    def employee_creates_group(self, owner: str, name: str, members: Sequence[str] = ()) -> ActionResult:
        with self.lock:
            g = self.create_group(owner, name, list(members))
        return self._result({"chat_id": g.chat_id}, [(CHAT, "create", {"ChatId": g.chat_id})])

    def _add_to_group(self, chat_id: str, member_id: str, *, join_scene: int, state: str = "",
                      invitor: str = "") -> tuple[str, str]:
        g = self.group(chat_id)
        if member_id in g.member_ids():
            raise ActionError(40058, f"{member_id} is already in {chat_id}")
        kind = 1 if member_id in self.members else 2
        if kind == 2:
            self.customer(member_id)
        g.members.append(GroupMember(member_id, kind, self.now(), join_scene, state=state, invitor=invitor))
        return g.bump_version()

    def _join_events(self, chat_id: str, ids: list[str], scene: int, last: str, cur: str) -> tuple:
        return (CHAT, "update", {"ChatId": chat_id, "UpdateDetail": "add_member", "JoinScene": scene,
                                 "MemChangeCnt": len(ids), "MemChangeList": list(ids), "LastMemVer": last,
                                 "CurMemVer": cur})

    def join_group_via_way(self, config_id: str, *, external_userid: str | None = None,
                           name: str = "微信用户", **customer_kw: Any) -> ActionResult:
        """A customer scans a 加入群聊 QR: joins the first non-full group; when all are full and
        auto_create_room=1, a new room is created (create event) first. join_scene 3."""
        events: list[tuple[str, str, dict]] = []
        with self.lock:
            way = self.join_way(config_id)
            c = self.customer(external_userid) if external_userid else self.add_customer(name, **customer_kw)
            live = [self.groups[cid] for cid in way.chat_id_list
                    if cid in self.groups and not self.groups[cid].dismissed]
            target = next((g for g in live if len(g.members) < self.group_qr_cap), None)
            created = None
            if target is None:
                if not way.auto_create_room or not way.chat_id_list:
                    raise ActionError(40058, "every group of this join way is full")
                first = self.groups[way.chat_id_list[0]]
                number = way.room_base_id + way.rooms_created
                way.rooms_created += 1
                target = self.create_group(first.owner, f"{way.room_base_name or first.name}{number}")
                created = target.chat_id
                if len(way.chat_id_list) < 5:
                    way.chat_id_list.append(target.chat_id)
                events.append((CHAT, "create", {"ChatId": target.chat_id}))
            last, cur = self._add_to_group(target.chat_id, c.external_userid, join_scene=3, state=way.state)
            events.append(self._join_events(target.chat_id, [c.external_userid], 3, last, cur))
            data = {"chat_id": target.chat_id, "external_userid": c.external_userid, "created_chat_id": created,
                    "state": way.state, "member_version": cur}
        return self._result(data, events)

    def invite_to_group(self, chat_id: str, member_id: str | None = None, *, name: str = "微信用户",
                        invitor: str | None = None, via_link: bool = False, **customer_kw: Any) -> ActionResult:
        """A member invites a customer (or an employee) into the group: join_scene 1 (2 via link),
        callback JoinScene 0."""
        with self.lock:
            g = self.group(chat_id)
            invitor = invitor or g.owner
            if member_id is None:
                member_id = self.add_customer(name, **customer_kw).external_userid
            last, cur = self._add_to_group(chat_id, member_id, join_scene=2 if via_link else 1, invitor=invitor)
            data = {"chat_id": chat_id, "member_id": member_id, "member_version": cur}
        return self._result(data, [self._join_events(chat_id, [member_id], 0, last, cur)])

    def _remove(self, chat_id: str, member_id: str, quit_scene: int) -> ActionResult:
        with self.lock:
            g = self.group(chat_id)
            if member_id not in g.member_ids():
                raise ActionError(40058, f"{member_id} is not in {chat_id}")
            if member_id == g.owner:
                raise ActionError(40058, "the owner cannot leave; change the owner or dismiss")
            g.members = [m for m in g.members if m.userid != member_id]
            g.admin_list = [u for u in g.admin_list if u != member_id]
            last, cur = g.bump_version()
        fields = {"ChatId": chat_id, "UpdateDetail": "del_member", "QuitScene": quit_scene, "MemChangeCnt": 1,
                  "MemChangeList": [member_id], "LastMemVer": last, "CurMemVer": cur}
        return self._result({"chat_id": chat_id, "member_id": member_id, "member_version": cur},
                            [(CHAT, "update", fields)])

    def leave_group(self, chat_id: str, member_id: str) -> ActionResult:
        return self._remove(chat_id, member_id, 0)

    def remove_from_group(self, chat_id: str, member_id: str) -> ActionResult:
        return self._remove(chat_id, member_id, 1)

    def rename_group(self, chat_id: str, name: str) -> ActionResult:
        with self.lock:
            self.group(chat_id).name = name
        return self._result({"chat_id": chat_id, "name": name},
                            [(CHAT, "update", {"ChatId": chat_id, "UpdateDetail": "change_name"})])

    def change_group_notice(self, chat_id: str, notice: str) -> ActionResult:
        with self.lock:
            self.group(chat_id).notice = notice
        return self._result({"chat_id": chat_id},
                            [(CHAT, "update", {"ChatId": chat_id, "UpdateDetail": "change_notice"})])

    def change_group_owner(self, chat_id: str, new_owner: str) -> ActionResult:
        with self.lock:
            g = self.group(chat_id)
            self.member(new_owner)
            if new_owner not in g.member_ids():
                g.members.append(GroupMember(new_owner, 1, self.now(), 1, invitor=g.owner))
                g.bump_version()
            g.owner = new_owner
        return self._result({"chat_id": chat_id, "owner": new_owner},
                            [(CHAT, "update", {"ChatId": chat_id, "UpdateDetail": "change_owner"})])

    def dismiss_group(self, chat_id: str) -> ActionResult:
        with self.lock:
            self.group(chat_id).dismissed = True
        return self._result({"chat_id": chat_id}, [(CHAT, "dismiss", {"ChatId": chat_id})])

    # -- mass send -----------------------------------------------------------------------------------
    def confirm_mass_send(self, msgid: str, userid: str | None = None) -> ActionResult:
        """The member confirms the mass-send task in the client. Each target gets status 1 (sent),
        2 (not a friend / group gone) or 3 (already received its quota of mass messages today)."""
        with self.lock:
            tpl = self._template(msgid)
            users = [userid] if userid else list(tpl.tasks)
            now, day = self.now(), self.day()
            summary: dict[str, int] = {}
            for uid in users:
                if uid not in tpl.tasks:
                    raise ActionError(40058, f"{uid} has no task in {msgid}")
                if tpl.tasks[uid]["status"] == 2:
                    continue
                tpl.tasks[uid] = {"status": 2, "send_time": now}
                for r in tpl.results[uid]:
                    target = str(r.get("chat_id") or r.get("external_userid") or "")
                    if "chat_id" in r:
                        g = self.groups.get(target)
                        ok = g is not None and not g.dismissed
                    else:
                        f = self.follows.get((uid, target))
                        ok = f is not None and not f.deleted_by_customer
                    if not ok:
                        r["status"] = 2
                    elif self.mass_received.get((day, target), 0) >= self.mass_quota_per_day:
                        r["status"] = 3
                    else:
                        self.mass_received[(day, target)] = self.mass_received.get((day, target), 0) + 1
                        r["status"] = 1
                        r["send_time"] = now
                    summary[target] = r["status"]
        return self._result({"msgid": msgid, "results": summary}, [])


# Actions callable through POST /sandbox/actions/{name} (JSON body = keyword arguments).
ACTIONS = (
    "scan_contact_way", "add_employee", "customer_deletes_employee", "employee_deletes_customer",
    "employee_edits_customer", "admin_create_tag", "admin_edit_tag", "admin_delete_tag", "employee_creates_group",
    "join_group_via_way", "invite_to_group", "leave_group", "remove_from_group", "rename_group",
    "change_group_notice", "change_group_owner", "dismiss_group", "confirm_mass_send", "oauth_code",
)
# Actions that return a plain value rather than an ActionResult: the JSON key it is answered under.
ACTION_VALUE_KEYS = {"oauth_code": "code"}

__all__ = ["Sandbox", "ActionResult", "ActionError", "ACTIONS", "ACTION_VALUE_KEYS", "_rand"]

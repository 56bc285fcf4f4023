"""In-memory corp state of the fake WeCom, and the server-API logic over it (reference §3).

Everything here is plain Python: ``CorpState.handle(method, path, query, body)`` answers an API
call with WeCom's JSON shape (errcode included), so the FastAPI app in ``server.py`` is a thin
shell and tests can also call it directly. All state is guarded by one re-entrant lock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

WELCOME_CODE_TTL = 20  # seconds (reference §3.8)
MAX_STATE = 30
MAX_JOIN_WAY_CHATS = 5
OAUTH_CODE_TTL = 300  # seconds: WeCom's OAuth2 codes live 5 minutes and work once (reference §3.8a)
APP_MESSAGE_PER_MEMBER_PER_MINUTE = 30  # message/send to one member (reference §3.10)
AGENT_TICKETS_PER_HOUR = 100  # ticket/get?type=agent_config calls per app per hour ("limited calls", §3.8a)
TEXTCARD_TITLE_MAX_BYTES = 128
TEXTCARD_DESCRIPTION_MAX_BYTES = 512
TEXTCARD_URL_MAX_BYTES = 2048
TEXT_CONTENT_MAX_BYTES = 2048
MESSAGE_MAX_TOUSER = 1000


class SandboxError(Exception):
    """An API call WeCom would refuse: carries WeCom's errcode."""

    def __init__(self, errcode: int, errmsg: str):
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


def _rand(prefix: str, n: int = 24) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def _param(cond: bool, msg: str, errcode: int = 40058) -> None:
    if not cond:
        raise SandboxError(errcode, msg)


# -- entities ----------------------------------------------------------------------------------
@dataclass
class Member:
    userid: str
    name: str
    customer_contact: bool = True
    department: list[int] = field(default_factory=lambda: [1])


@dataclass
class Customer:
    external_userid: str
    name: str
    unionid: str = ""
    type: int = 1  # 1 WeChat, 2 WeCom
    gender: int = 0
    avatar: str = ""
    corp_name: str = ""


@dataclass
class Follow:
    userid: str
    external_userid: str
    createtime: int
    remark: str = ""
    description: str = ""
    tag_ids: list[str] = field(default_factory=list)
    state: str = ""
    add_way: int = 1
    oper_userid: str = ""
    remark_mobiles: list[str] = field(default_factory=list)
    deleted_by_customer: bool = False


@dataclass
class GroupMember:
    userid: str
    type: int  # 1 member, 2 external
    join_time: int
    join_scene: int  # 1 direct invite, 2 invite link, 3 QR
    state: str = ""
    invitor: str = ""
    group_nickname: str = ""


@dataclass
class Group:
    chat_id: str
    name: str
    owner: str
    create_time: int
    notice: str = ""
    status: int = 0  # inheritance status for groupchat/list
    dismissed: bool = False
    admin_list: list[str] = field(default_factory=list)
    members: list[GroupMember] = field(default_factory=list)
    member_version: str = ""
    version_seq: int = 0

    def member_ids(self) -> list[str]:
        return [m.userid for m in self.members]

    def bump_version(self) -> tuple[str, str]:
        last = self.member_version
        self.version_seq += 1
        raw = f"{self.chat_id}:{self.version_seq}:{','.join(sorted(self.member_ids()))}"
        self.member_version = hashlib.md5(raw.encode()).hexdigest()
        return last, self.member_version


@dataclass
class Tag:
    id: str
    name: str
    group_id: str
    create_time: int
    order: int = 0


@dataclass
class TagGroup:
    group_id: str
    group_name: str
    create_time: int
    order: int = 0
    tag_ids: list[str] = field(default_factory=list)


@dataclass
class ContactWay:
    config_id: str
    type: int
    scene: int
    qr_code: str
    style: int = 1
    remark: str = ""
    skip_verify: bool = True
    state: str = ""
    user: list[str] = field(default_factory=list)
    party: list[int] = field(default_factory=list)
    is_temp: bool = False
    expires_in: int = 0
    chat_expires_in: int = 0
    unionid: str = ""
    is_exclusive: bool = False
    mark_source: bool = False
    next_user: int = 0


@dataclass
class JoinWay:
    config_id: str
    scene: int
    chat_id_list: list[str]
    qr_code: str
    remark: str = ""
    auto_create_room: int = 1
    room_base_name: str = ""
    room_base_id: int = 1
    state: str = ""
    mark_source: bool = False
    rooms_created: int = 0


@dataclass
class MsgTemplate:
    msgid: str
    chat_type: str
    creator: str
    create_time: int
    text: dict | None
    attachments: list
    # userid -> {"status": 0|2, "send_time": int}
    tasks: dict[str, dict] = field(default_factory=dict)
    # userid -> [{"external_userid"|"chat_id", "userid", "status", "send_time"}]
    results: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class WelcomeCode:
    code: str
    userid: str
    external_userid: str
    issued_at: float
    used: bool = False


@dataclass
class OAuthCode:
    code: str
    issued_at: float
    userid: str = ""  # a member; else a non-member visitor (openid, and external_userid for a customer)
    openid: str = ""
    external_userid: str = ""
    used: bool = False


# -- state + API ---------------------------------------------------------------------------------
class CorpState:
    def __init__(
        self,
        corp_id: str = "ww0000sandboxcorp",
        secret: str = "sandbox-secret",
        *,
        token_expires_in: int = 7200,
        rate_limit_per_minute: int = 10_000,
        group_qr_cap: int = 200,
        mass_quota_per_day: int = 1,
        follow_page_size: int = 500,
        groupchat_list_owner_filter_over: int = 0,
        qr_base_url: str = "http://127.0.0.1:8899/sandbox/qr/",
        app_message_per_member_per_minute: int = APP_MESSAGE_PER_MEMBER_PER_MINUTE,
        agent_ticket_expires_in: int = 7200,
        agent_tickets_per_hour: int = AGENT_TICKETS_PER_HOUR,
        clock: Callable[[], float] = time.time,
    ):
        self.lock = threading.RLock()
        self.corp_id = corp_id
        self.secret = secret
        self.token_expires_in = int(token_expires_in)
        self.rate_limit_per_minute = int(rate_limit_per_minute)
        self.group_qr_cap = int(group_qr_cap)
        self.mass_quota_per_day = int(mass_quota_per_day)
        self.follow_page_size = int(follow_page_size)
        # 81017 when groupchat/list has no owner_filter and more members than this (0 = never).
        self.groupchat_list_owner_filter_over = int(groupchat_list_owner_filter_over)
        self.qr_base_url = qr_base_url
        self.app_message_per_member_per_minute = int(app_message_per_member_per_minute)
        self.agent_ticket_expires_in = int(agent_ticket_expires_in)
        self.agent_tickets_per_hour = int(agent_tickets_per_hour)  # 0 = unlimited
        self.clock = clock
        # The self-built app's agentid; message/send must name it (None: accept any). Sandbox sets it.
        self.agent_id: int | None = None

        self.members: dict[str, Member] = {}
        self.customers: dict[str, Customer] = {}
        self.follows: dict[tuple[str, str], Follow] = {}
        self.groups: dict[str, Group] = {}
        self.tag_groups: dict[str, TagGroup] = {}
        self.tags: dict[str, Tag] = {}
        self.contact_ways: dict[str, ContactWay] = {}
        self.join_ways: dict[str, JoinWay] = {}
        self.templates: dict[str, MsgTemplate] = {}
        self.welcome_codes: dict[str, WelcomeCode] = {}
        self.welcome_messages: list[dict] = []
        # message/send: one dict per member a message was delivered to (touser, msgtype, textcard|text, time)
        self.app_messages: list[dict] = []
        self.group_robots: dict[str, str] = {}  # webhook key -> chat_id
        self.robot_messages: list[dict] = []
        self.robot_message_times: dict[str, list[float]] = {}
        self.app_message_times: dict[str, list[float]] = {}  # userid -> delivery times in the last minute
        self.oauth_codes: dict[str, OAuthCode] = {}
        self.agent_tickets: dict[str, float] = {}  # ticket -> expires_at (clock time)
        self.current_agent_ticket: str | None = None
        self.agent_ticket_calls: dict[int, int] = {}  # hour -> ticket/get calls
        # (day, chat_id or external_userid) -> mass messages received that day
        self.mass_received: dict[tuple[str, str], int] = {}
        # What seed_demo built (per store code: staff, groups, QR configs); persisted with the corp.
        self.demo: dict | None = None

        # Durable corp (persist.py): when set, every change made through the API or an action is
        # written to this JSON file before the call returns.
        self.persist_path: Path | None = None
        self._dirty = False
        self._save_lock = threading.Lock()
        self._save_seq = 0  # snapshots taken (under self.lock)
        self._saved_seq = 0  # the newest snapshot on disk

        self.tokens: dict[str, float] = {}  # token -> expires_at (clock time)
        self.current_token: str | None = None
        self.rate_counts: dict[tuple[str, int], int] = {}
        self.faults: list[dict] = []  # {"path", "errcode", "times"}
        self.api_calls: list[tuple[str, str]] = []  # (method, path)

    # -- helpers -----------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock())

    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(self.clock()))

    def qr_image_url(self, config_id: str) -> str:
        """The ``qr_code`` WeCom answers: an image (PNG) of the QR code."""
        return f"{self.qr_base_url}{config_id}.png"

    def scan_page_url(self, config_id: str) -> str:
        """What the QR code encodes: the page where a person "scans" it (server.py)."""
        return f"{self.qr_base_url}{config_id}"

    def member(self, userid: str) -> Member:
        m = self.members.get(userid)
        if m is None:
            raise SandboxError(60111, f"userid not found: {userid}")
        return m

    def customer(self, external_userid: str) -> Customer:
        c = self.customers.get(external_userid)
        if c is None:
            raise SandboxError(40096, f"invalid external_userid: {external_userid}")
        return c

    def follow(self, userid: str, external_userid: str) -> Follow:
        self.member(userid)
        self.customer(external_userid)
        f = self.follows.get((userid, external_userid))
        if f is None:
            raise SandboxError(84061, "not external contact")
        return f

    def group(self, chat_id: str, *, allow_dismissed: bool = False) -> Group:
        g = self.groups.get(chat_id)
        if g is None:
            raise SandboxError(40050, f"chatid not found: {chat_id}")
        if g.dismissed and not allow_dismissed:
            raise SandboxError(49008, "group chat has been dismissed")
        return g

    def tag(self, tag_id: str) -> Tag:
        t = self.tags.get(tag_id)
        if t is None:
            raise SandboxError(40068, f"invalid tagid: {tag_id}")
        return t

    def follows_of_customer(self, external_userid: str) -> list[Follow]:
        return sorted(
            (f for (u, e), f in self.follows.items() if e == external_userid), key=lambda f: (f.createtime, f.userid)
        )

    # -- entity creation (used by seed and actions) -----------------------------------------
    def add_member(self, userid: str, name: str, *, customer_contact: bool = True) -> Member:
        with self.lock:
            m = Member(userid, name, customer_contact)
            self.members[userid] = m
            self._changed()
            return m

    def add_customer(self, name: str, *, external_userid: str | None = None, **kw: Any) -> Customer:
        with self.lock:
            eid = external_userid or _rand("wm", 26)
            c = Customer(eid, name, unionid=kw.pop("unionid", _rand("oz", 26)), **kw)
            self.customers[eid] = c
            self._changed()
            return c

    def add_follow(self, userid: str, external_userid: str, **kw: Any) -> Follow:
        with self.lock:
            self.member(userid)
            self.customer(external_userid)
            f = Follow(userid, external_userid, createtime=kw.pop("createtime", self.now()), **kw)
            f.oper_userid = f.oper_userid or external_userid
            self.follows[(userid, external_userid)] = f
            self._changed()
            return f

    def create_group(self, owner: str, name: str, members: Sequence[str] = (), *, chat_id: str | None = None,
                     created_at: int | None = None) -> Group:
        """``created_at`` (Unix seconds, default now): when the group was made and its first members
        joined, so a seeded corp can have history."""
        with self.lock:
            self.member(owner)
            now = self.now() if created_at is None else created_at
            g = Group(chat_id or _rand("wr", 30), name, owner, now)
            g.members.append(GroupMember(owner, 1, now, 1))
            for uid in members:
                if uid == owner:
                    continue
                kind = 1 if uid in self.members else 2
                if kind == 2:
                    self.customer(uid)
                g.members.append(GroupMember(uid, kind, now, 1, invitor=owner))
            g.bump_version()
            self.groups[g.chat_id] = g
            self._changed()
            return g

    def create_tag(self, name: str, *, group_name: str | None = None, group_id: str | None = None,
                   order: int = 0) -> tuple[Tag, TagGroup, bool]:
        """Returns (tag, group, group_was_created)."""
        with self.lock:
            _param(bool(name) and len(name) <= 30, "tag name must be 1..30 characters")
            created = False
            if group_id:
                grp = self.tag_groups.get(group_id)
                if grp is None:
                    raise SandboxError(40068, f"invalid group_id: {group_id}")
            else:
                if not group_name or len(group_name) > 30:
                    raise SandboxError(40058, "group_name must be 1..30 characters")
                grp = next((g for g in self.tag_groups.values() if g.group_name == group_name), None)
                if grp is None:
                    grp = TagGroup(_rand("et", 22), group_name, self.now())
                    self.tag_groups[grp.group_id] = grp
                    created = True
            if any(self.tags[t].name == name for t in grp.tag_ids):
                raise SandboxError(40071, f"tag name exists: {name}")
            tag = Tag(_rand("et", 22), name, grp.group_id, self.now(), order)
            self.tags[tag.id] = tag
            grp.tag_ids.append(tag.id)
            self._changed()
            return tag, grp, created

    def delete_tags(self, tag_ids=(), group_ids=()) -> list[str]:
        """Deletes tags/groups (a group with no tags left goes too); returns removed ids."""
        with self.lock:
            removed: list[str] = []
            for gid in group_ids:
                grp = self.tag_groups.get(gid)
                if grp is None:
                    raise SandboxError(40068, f"invalid group_id: {gid}")
            for tid in tag_ids:
                self.tag(tid)
            for gid in group_ids:
                grp = self.tag_groups.pop(gid, None)
                if grp:
                    for tid in grp.tag_ids:
                        self.tags.pop(tid, None)
                        removed.append(tid)
                    removed.append(gid)
            for tid in tag_ids:
                tag = self.tags.pop(tid, None)
                if tag is None:
                    continue
                removed.append(tid)
                grp = self.tag_groups.get(tag.group_id)
                if grp:
                    grp.tag_ids.remove(tid)
                    if not grp.tag_ids:
                        self.tag_groups.pop(grp.group_id)
                        removed.append(grp.group_id)
            gone = set(removed)
            for f in self.follows.values():
                f.tag_ids = [t for t in f.tag_ids if t not in gone]
            self._changed()
            return removed

    def issue_welcome_code(self, userid: str, external_userid: str) -> str:
        with self.lock:
            code = _rand("WC", 32)
            self.welcome_codes[code] = WelcomeCode(code, userid, external_userid, self.clock())
            return code

    def oauth_code(self, userid: str | None = None, *, external_userid: str | None = None) -> str:
        """Mint the OAuth2 ``code`` WeCom would put on the redirect after its authorize page
        (one-time, 5 minutes). With ``userid``: that member (60111 if unknown). Without: a
        non-member visitor (an ``openid``), the customer ``external_userid`` if given."""
        with self.lock:
            if userid is not None:
                self.member(userid)
                oc = OAuthCode(_rand("", 32), self.clock(), userid=userid)
            else:
                if external_userid is not None:
                    self.customer(external_userid)
                    openid = "o" + hashlib.sha256(f"{self.corp_id}:{external_userid}".encode()).hexdigest()[:27]
                else:
                    openid = _rand("o", 27)
                oc = OAuthCode(_rand("", 32), self.clock(), openid=openid, external_userid=external_userid or "")
            self.oauth_codes[oc.code] = oc
            return oc.code

    def agent_config_signature_valid(self, signature: str, noncestr: str, timestamp: int | str, url: str) -> bool:
        """Would ``wx.agentConfig`` accept this signature? True when it is the sha1 of
        ``jsapi_ticket=T&noncestr=N&timestamp=TS&url=URL`` (url without '#…') for a ticket this
        sandbox issued that has not expired (reference §3.8a)."""
        with self.lock:
            page = url.split("#", 1)[0]
            now = self.clock()
            for ticket, expires_at in self.agent_tickets.items():
                if expires_at <= now:
                    continue
                raw = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={page}"
                if secrets.compare_digest(hashlib.sha1(raw.encode()).hexdigest().encode(), str(signature).encode()):
                    return True
            return False

    # -- tokens, rate limit, faults ---------------------------------------------------------
    def gettoken(self, corpid: str, corpsecret: str) -> dict:
        if corpid != self.corp_id:
            raise SandboxError(40013, "invalid corpid")
        if not corpsecret or not secrets.compare_digest(corpsecret.encode(), self.secret.encode()):
            raise SandboxError(40001, "invalid credential (secret)")
        now = self.clock()
        tok = self.current_token
        if tok is None or self.tokens.get(tok, 0) <= now:
            tok = _rand("", 64)
            self.tokens[tok] = now + self.token_expires_in
            self.current_token = tok
        return {"access_token": tok, "expires_in": max(1, int(round(self.tokens[tok] - now)))}

    def check_token(self, token: str | None) -> None:
        if not token:
            raise SandboxError(41001, "access_token missing")
        exp = self.tokens.get(token)
        if exp is None:
            raise SandboxError(40014, "invalid access_token")
        if exp <= self.clock():
            raise SandboxError(42001, "access_token expired")

    def expire_tokens(self) -> None:
        """Force every issued token to be expired (the next API call gets 42001)."""
        with self.lock:
            past = self.clock() - 1
            for tok in self.tokens:
                self.tokens[tok] = past

    def inject_fault(self, path: str, errcode: int, times: int = 1) -> None:
        """The next ``times`` calls to ``path`` answer ``errcode`` (e.g. -1, 45009, 45033)."""
        with self.lock:
            self.faults.append({"path": path.strip("/"), "errcode": int(errcode), "times": int(times)})

    def _check_rate(self, path: str) -> None:
        if self.rate_limit_per_minute <= 0:
            return
        key = (path, int(self.clock() // 60))
        self.rate_counts[key] = self.rate_counts.get(key, 0) + 1
        if self.rate_counts[key] > self.rate_limit_per_minute:
            raise SandboxError(45009, "api freq out of limit")

    def _check_fault(self, path: str) -> None:
        for f in self.faults:
            if f["path"] == path and f["times"] > 0:
                f["times"] -= 1
                raise SandboxError(f["errcode"], "injected fault")

    # -- durability (persist.py holds the file format) ---------------------------------------
    def _changed(self) -> None:
        """Note that the corp changed; ``flush()`` writes it out (call with the lock held)."""
        self._dirty = True

    def save(self, path: Path | str | None = None) -> Path:
        """Write the corp to ``path`` (default: ``persist_path``) atomically; returns the path.
        The snapshot is taken under the lock; the file is written outside it, and a snapshot older
        than the one already on disk is never written over it."""
        from scrm.sandbox.persist import corp_to_dict, write_json_atomic

        to_persist_path = path is None
        target = Path(path) if path is not None else self.persist_path
        if target is None:
            raise ValueError("no path given and the sandbox has no persist_path")
        with self.lock:
            data = corp_to_dict(self)
            if to_persist_path:
                self._dirty = False
            self._save_seq += 1
            seq = self._save_seq
        text = json.dumps(data, ensure_ascii=False, indent=1)
        with self._save_lock:
            if not to_persist_path:
                write_json_atomic(target, text)
            elif seq > self._saved_seq:
                write_json_atomic(target, text)
                self._saved_seq = seq
        return target

    def flush(self) -> None:
        """After a change: save the corp if it is not saved yet (no-op without ``persist_path``).
        If another thread's save already took this change, wait for its write to finish. A failed
        write is logged and retried with the next change; the call that changed the corp has
        already happened in WeCom's eyes and still answers."""
        if self.persist_path is None:
            return
        if not self._dirty:
            with self._save_lock:  # a save holding our change may still be writing
                return
        try:
            self.save()
        except OSError as exc:
            self._dirty = True
            log.error("sandbox.save_failed", path=str(self.persist_path), error=str(exc))

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> dict:
        """Answer one /cgi-bin/ call the way WeCom would (always a JSON object with errcode). A call
        that may change the corp is saved before it answers; reads never write."""
        try:
            return self._dispatch(method, path, query, body)
        finally:
            if path.strip("/") in MUTATING_ROUTES or path.strip("/") == "webhook/send":
                self.flush()

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> dict:
        path = path.strip("/")
        with self.lock:
            self.api_calls.append((method.upper(), path))
            try:
                self._check_fault(path)
                self._check_rate(path)
                if path == "gettoken":
                    out = self.gettoken(query.get("corpid", ""), query.get("corpsecret", ""))
                elif path == "webhook/send":  # a group robot: its key, not an access token
                    self._changed()  # the robot message log
                    out = self.api_webhook_send(query.get("key", ""), body if isinstance(body, dict) else {})
                else:
                    self.check_token(query.get("access_token"))
                    route = ROUTES.get(path)
                    if route is None or route[0] != method.upper():
                        raise SandboxError(404, f"api not found: {method} {path}")
                    if body is not None and not isinstance(body, dict):
                        raise SandboxError(47001, "data format error")
                    if path in MUTATING_ROUTES:
                        self._changed()
                    out = getattr(self, route[1])(query if route[0] == "GET" else (body or {}))
            except SandboxError as exc:
                return {"errcode": exc.errcode, "errmsg": exc.errmsg}
            return {"errcode": 0, "errmsg": "ok", **out}

    # -- renderers ---------------------------------------------------------------------------
    def _tag_json(self, tag_id: str) -> dict:
        tag = self.tags[tag_id]
        grp = self.tag_groups[tag.group_id]
        return {"group_name": grp.group_name, "tag_name": tag.name, "tag_id": tag.id, "type": 1}

    def _contact_json(self, c: Customer) -> dict:
        out = {"external_userid": c.external_userid, "name": c.name, "type": c.type, "gender": c.gender,
               "avatar": c.avatar}
        if c.unionid:
            out["unionid"] = c.unionid
        if c.corp_name:
            out["corp_name"] = c.corp_name
        return out

    def _follow_json(self, f: Follow) -> dict:
        out = {"userid": f.userid, "remark": f.remark, "description": f.description, "createtime": f.createtime,
               "tags": [self._tag_json(t) for t in f.tag_ids if t in self.tags],
               "remark_mobiles": list(f.remark_mobiles),
               "oper_userid": f.oper_userid, "add_way": f.add_way}
        if f.state:
            out["state"] = f.state
        return out

    def group_json(self, g: Group, need_name: bool = True) -> dict:
        members = []
        for m in g.members:
            d: dict[str, Any] = {"userid": m.userid, "type": m.type, "join_time": m.join_time,
                                 "join_scene": m.join_scene, "group_nickname": m.group_nickname}
            if m.state:
                d["state"] = m.state
            if m.invitor:
                d["invitor"] = {"userid": m.invitor}
            if m.type == 2 and m.userid in self.customers and self.customers[m.userid].unionid:
                d["unionid"] = self.customers[m.userid].unionid
            if need_name:
                who = self.members.get(m.userid) or self.customers.get(m.userid)
                d["name"] = who.name if who else ""
            members.append(d)
        return {"chat_id": g.chat_id, "name": g.name, "owner": g.owner, "create_time": g.create_time,
                "notice": g.notice, "member_list": members, "admin_list": [{"userid": u} for u in g.admin_list],
                "member_version": g.member_version}

    def _tag_group_json(self, grp: TagGroup, tag_ids: list[str] | None = None) -> dict:
        ids = grp.tag_ids if tag_ids is None else tag_ids
        return {"group_id": grp.group_id, "group_name": grp.group_name, "create_time": grp.create_time,
                "order": grp.order,
                "tag": [{"id": t, "name": self.tags[t].name, "create_time": self.tags[t].create_time,
                         "order": self.tags[t].order} for t in ids]}

    # -- API handlers --------------------------------------------------------------------------
    @staticmethod
    def _cursor(value: Any) -> int:
        if value in (None, ""):
            return 0
        try:
            n = int(str(value))
        except ValueError:
            raise SandboxError(50100, "invalid cursor") from None
        if n < 0:
            raise SandboxError(50100, "invalid cursor")
        return n

    @staticmethod
    def _limit(value: Any, default: int, maximum: int, *, required: bool = False) -> int:
        if value in (None, ""):
            _param(not required, "limit is required")
            return default
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise SandboxError(40058, "invalid limit") from None
        _param(1 <= n <= maximum, f"limit must be 1..{maximum}")
        return n

    @staticmethod
    def _page(items: list, cursor: int, limit: int) -> tuple[list, str]:
        page = items[cursor : cursor + limit]
        nxt = cursor + limit
        return page, (str(nxt) if nxt < len(items) else "")

    def api_user_list(self, q: dict) -> dict:
        return {"userlist": [{"userid": m.userid, "name": m.name, "department": m.department, "status": 1}
                             for m in self.members.values()]}

    def api_get_follow_user_list(self, q: dict) -> dict:
        return {"follow_user": [m.userid for m in self.members.values() if m.customer_contact]}

    def api_get(self, q: dict) -> dict:
        eid = q.get("external_userid") or ""
        c = self.customer(eid)
        follows = self.follows_of_customer(eid)
        if not follows:
            raise SandboxError(84061, "not external contact")
        page, nxt = self._page(follows, self._cursor(q.get("cursor")), self.follow_page_size)
        return {"external_contact": self._contact_json(c), "follow_user": [self._follow_json(f) for f in page],
                "next_cursor": nxt}

    def api_batch_get_by_user(self, b: dict) -> dict:
        userids = b.get("userid_list")
        if not isinstance(userids, list) or not 1 <= len(userids) <= 100:
            raise SandboxError(40058, "userid_list must hold 1..100 userids")
        limit = self._limit(b.get("limit"), 50, 100)
        valid = [u for u in userids if u in self.members]
        if not valid:
            raise SandboxError(40003, "invalid userid")
        items = []
        for u in valid:
            for f in sorted((f for (uu, _), f in self.follows.items() if uu == u),
                            key=lambda f: (f.createtime, f.external_userid)):
                info = {"userid": f.userid, "remark": f.remark, "description": f.description,
                        "createtime": f.createtime, "tag_id": [t for t in f.tag_ids if t in self.tags],
                        "remark_mobiles": list(f.remark_mobiles), "oper_userid": f.oper_userid, "add_way": f.add_way}
                if f.state:
                    info["state"] = f.state
                items.append({"external_contact": self._contact_json(self.customers[f.external_userid]),
                              "follow_info": info})
        page, nxt = self._page(items, self._cursor(b.get("cursor")), limit)
        return {"external_contact_list": page, "next_cursor": nxt,
                "fail_info": {"unlicensed_userid_list": []}}

    def api_groupchat_list(self, b: dict) -> dict:
        limit = self._limit(b.get("limit"), 0, 1000, required=True)
        status_filter = int(b.get("status_filter") or 0)
        _param(status_filter in (0, 1, 2, 3), "invalid status_filter")
        owners = (b.get("owner_filter") or {}).get("userid_list")
        if owners is not None:
            _param(isinstance(owners, list) and len(owners) <= 100, "owner_filter holds at most 100 userids")
        elif self.groupchat_list_owner_filter_over and len(self.members) > self.groupchat_list_owner_filter_over:
            raise SandboxError(81017, "too many members: use owner_filter")
        chats = [g for g in sorted(self.groups.values(), key=lambda g: (g.create_time, g.chat_id))
                 if not g.dismissed and (not owners or g.owner in owners)
                 and (status_filter == 0 or g.status == status_filter)]
        page, nxt = self._page(chats, self._cursor(b.get("cursor")), limit)
        return {"group_chat_list": [{"chat_id": g.chat_id, "status": g.status} for g in page], "next_cursor": nxt}

    def api_groupchat_get(self, b: dict) -> dict:
        g = self.group(str(b.get("chat_id") or ""))
        return {"group_chat": self.group_json(g, bool(b.get("need_name", 0)))}

    def api_get_corp_tag_list(self, b: dict) -> dict:
        group_ids = b.get("group_id") or []
        tag_ids = b.get("tag_id") or []
        groups = sorted(self.tag_groups.values(), key=lambda g: (g.create_time, g.group_id))
        if group_ids:
            return {"tag_group": [self._tag_group_json(g) for g in groups if g.group_id in group_ids]}
        if tag_ids:
            out = []
            for g in groups:
                ids = [t for t in g.tag_ids if t in tag_ids]
                if ids:
                    out.append(self._tag_group_json(g, ids))
            return {"tag_group": out}
        return {"tag_group": [self._tag_group_json(g) for g in groups]}

    def api_add_corp_tag(self, b: dict) -> dict:
        tags = b.get("tag")
        if not isinstance(tags, list) or not tags:
            raise SandboxError(40058, "tag list is required")
        for t in tags:
            _param(isinstance(t, dict) and bool(t.get("name")) and len(str(t["name"])) <= 30,
                   "tag name must be 1..30 characters")
        group_id = b.get("group_id") or None
        group_name = b.get("group_name") or None
        if group_id is None:
            _param(bool(group_name), "group_id or group_name is required")
        new_ids = []
        grp: TagGroup | None = None
        for t in tags:
            tag, grp, _ = self.create_tag(str(t["name"]), group_id=group_id or (grp.group_id if grp else None),
                                          group_name=group_name, order=int(t.get("order") or 0))
            new_ids.append(tag.id)
        assert grp is not None  # tags is a non-empty list
        if b.get("order") is not None:
            grp.order = int(b["order"])
        return {"tag_group": self._tag_group_json(grp, new_ids)}

    def api_edit_corp_tag(self, b: dict) -> dict:
        tid = str(b.get("id") or "")
        name = b.get("name")
        if name is not None:
            _param(bool(name) and len(str(name)) <= 30, "name must be 1..30 characters")
        obj: Tag | TagGroup
        if tid in self.tags:
            obj = self.tags[tid]
            if name is not None:
                self.check_tag_rename(tid, str(name))
                obj.name = str(name)
        elif tid in self.tag_groups:
            obj = self.tag_groups[tid]
            if name is not None:
                self.check_tag_rename(tid, str(name))
                obj.group_name = str(name)
        else:
            raise SandboxError(40068, f"invalid tagid: {tid}")
        if b.get("order") is not None:
            obj.order = int(b["order"])
        return {}

    def check_tag_rename(self, id: str, name: str) -> None:
        """A tag's name is unique in its group, a group's among groups (40071, as when creating)."""
        _param(bool(name) and len(name) <= 30, "name must be 1..30 characters")
        if id in self.tags:
            grp = self.tag_groups[self.tags[id].group_id]
            if any(self.tags[t].name == name for t in grp.tag_ids if t != id):
                raise SandboxError(40071, f"tag name exists: {name}")
        elif any(g.group_name == name for g in self.tag_groups.values() if g.group_id != id):
            raise SandboxError(40071, f"tag group name exists: {name}")

    def api_del_corp_tag(self, b: dict) -> dict:
        tag_ids, group_ids = b.get("tag_id") or [], b.get("group_id") or []
        _param(bool(tag_ids or group_ids), "tag_id or group_id is required")
        self.delete_tags(tag_ids, group_ids)
        return {}

    def api_mark_tag(self, b: dict) -> dict:
        add, remove = b.get("add_tag") or [], b.get("remove_tag") or []
        _param(bool(add or remove), "add_tag and remove_tag cannot both be empty")
        f = self.follow(str(b.get("userid") or ""), str(b.get("external_userid") or ""))
        for t in list(add) + list(remove):
            self.tag(t)
        f.tag_ids = [t for t in f.tag_ids if t not in remove] + [t for t in add if t not in f.tag_ids]
        return {}

    # contact ways
    def _validate_way_common(self, b: dict) -> None:
        if "state" in b and b["state"] is not None:
            _param(len(str(b["state"])) <= MAX_STATE, "state is longer than 30 characters")
        if "remark" in b and b["remark"] is not None:
            _param(len(str(b["remark"])) <= 30, "remark is longer than 30 characters")

    def _validate_users(self, users: list) -> None:
        _param(isinstance(users, list), "user must be a list")
        if len(users) > 100:
            raise SandboxError(41041, "too many users (max 100)")
        for u in users:
            m = self.member(u)
            if not m.customer_contact:
                raise SandboxError(41054, f"user has no customer-contact permission: {u}")

    def api_add_contact_way(self, b: dict) -> dict:
        typ, scene = b.get("type"), b.get("scene")
        if typ not in (1, 2):
            raise SandboxError(40058, "type must be 1 or 2")
        if scene not in (1, 2):
            raise SandboxError(40058, "scene must be 1 or 2")
        self._validate_way_common(b)
        users = b.get("user") or []
        self._validate_users(users)
        if typ == 1:
            _param(len(users) == 1, "type 1 needs exactly one user")
        else:
            _param(bool(users or b.get("party")), "user or party is required")
        cid = secrets.token_hex(16)
        way = ContactWay(cid, typ, scene, self.qr_image_url(cid) if scene == 2 else "",
                         style=int(b.get("style") or 1), remark=str(b.get("remark") or ""),
                         skip_verify=bool(b.get("skip_verify", True)), state=str(b.get("state") or ""),
                         user=list(users), party=list(b.get("party") or []), is_temp=bool(b.get("is_temp", False)),
                         expires_in=int(b.get("expires_in") or 0), chat_expires_in=int(b.get("chat_expires_in") or 0),
                         unionid=str(b.get("unionid") or ""), is_exclusive=bool(b.get("is_exclusive", False)),
                         mark_source=bool(b.get("mark_source", False)))
        self.contact_ways[cid] = way
        out = {"config_id": cid}
        if way.qr_code:
            out["qr_code"] = way.qr_code
        return out

    def contact_way(self, config_id: str) -> ContactWay:
        way = self.contact_ways.get(config_id)
        if way is None:
            raise SandboxError(41044, f"invalid config_id: {config_id}")
        return way

    def contact_way_json(self, w: ContactWay) -> dict:
        return {"config_id": w.config_id, "type": w.type, "scene": w.scene, "style": w.style, "remark": w.remark,
                "skip_verify": w.skip_verify, "state": w.state,
                "qr_code": self.qr_image_url(w.config_id) if w.qr_code else "", "user": list(w.user),
                "party": list(w.party), "is_temp": w.is_temp, "expires_in": w.expires_in,
                "chat_expires_in": w.chat_expires_in, "unionid": w.unionid, "is_exclusive": w.is_exclusive,
                "mark_source": w.mark_source}

    def api_get_contact_way(self, b: dict) -> dict:
        return {"contact_way": self.contact_way_json(self.contact_way(str(b.get("config_id") or "")))}

    def api_update_contact_way(self, b: dict) -> dict:
        way = self.contact_way(str(b.get("config_id") or ""))
        self._validate_way_common(b)
        if "user" in b:
            self._validate_users(b["user"] or [])
            if way.type == 1:
                _param(len(b["user"] or []) == 1, "type 1 needs exactly one user")
        for key in ("remark", "state", "style", "skip_verify", "user", "party", "expires_in", "chat_expires_in",
                    "unionid", "mark_source"):
            if key in b and b[key] is not None:
                setattr(way, key, b[key])
        return {}

    def api_del_contact_way(self, b: dict) -> dict:
        self.contact_way(str(b.get("config_id") or ""))
        del self.contact_ways[b["config_id"]]
        return {}

    # join ways
    def _validate_join_way(self, b: dict, *, partial: bool = False) -> None:
        if not partial or "scene" in b:
            _param(b.get("scene") in (1, 2), "scene must be 1 or 2")
        if not partial or "chat_id_list" in b:
            chats = b.get("chat_id_list")
            if not isinstance(chats, list) or not 1 <= len(chats) <= MAX_JOIN_WAY_CHATS:
                raise SandboxError(40058, "chat_id_list must hold 1..5 chat ids")
            for c in chats:
                self.group(c)
        if b.get("state") is not None:
            _param(len(str(b["state"])) <= MAX_STATE, "state is longer than 30 characters")
        if b.get("room_base_name") is not None:
            _param(len(str(b["room_base_name"])) <= 40, "room_base_name is longer than 40 characters")
        if b.get("auto_create_room") is not None:
            _param(b["auto_create_room"] in (0, 1), "auto_create_room must be 0 or 1")

    def api_add_join_way(self, b: dict) -> dict:
        self._validate_join_way(b)
        cid = secrets.token_hex(16)
        self.join_ways[cid] = JoinWay(
            cid, int(b["scene"]), list(b["chat_id_list"]), self.qr_image_url(cid),
            remark=str(b.get("remark") or "")[:30], auto_create_room=int(b.get("auto_create_room", 1)),
            room_base_name=str(b.get("room_base_name") or ""), room_base_id=int(b.get("room_base_id") or 1),
            state=str(b.get("state") or ""), mark_source=bool(b.get("mark_source", False)))
        return {"config_id": cid}

    def join_way(self, config_id: str) -> JoinWay:
        way = self.join_ways.get(config_id)
        if way is None:
            raise SandboxError(41044, f"invalid config_id: {config_id}")
        return way

    def join_way_json(self, w: JoinWay) -> dict:
        return {"config_id": w.config_id, "scene": w.scene, "remark": w.remark, "auto_create_room": w.auto_create_room,
                "room_base_name": w.room_base_name, "room_base_id": w.room_base_id,
                "chat_id_list": list(w.chat_id_list), "qr_code": self.qr_image_url(w.config_id), "state": w.state,
                "mark_source": w.mark_source}

    def api_get_join_way(self, b: dict) -> dict:
        return {"join_way": self.join_way_json(self.join_way(str(b.get("config_id") or "")))}

    def api_update_join_way(self, b: dict) -> dict:
        way = self.join_way(str(b.get("config_id") or ""))
        self._validate_join_way(b)  # update takes the full object
        way.scene = int(b["scene"])
        way.chat_id_list = list(b["chat_id_list"])
        way.remark = str(b.get("remark") or "")[:30]
        way.auto_create_room = int(b.get("auto_create_room", 1))
        way.room_base_name = str(b.get("room_base_name") or "")
        way.room_base_id = int(b.get("room_base_id") or 1)
        way.state = str(b.get("state") or "")
        way.mark_source = bool(b.get("mark_source", False))
        return {}

    def api_del_join_way(self, b: dict) -> dict:
        self.join_way(str(b.get("config_id") or ""))
        del self.join_ways[b["config_id"]]
        return {}

    # mass messages
    def api_add_msg_template(self, b: dict) -> dict:
        chat_type = b.get("chat_type") or "single"
        _param(chat_type in ("single", "group"), "chat_type must be single or group")
        text = b.get("text")
        attachments = b.get("attachments") or []
        _param(bool(text and text.get("content")) or bool(attachments), "text or attachments is required")
        if text:
            _param(len(str(text.get("content", "")).encode()) <= 4000, "text.content exceeds 4000 bytes")
        _param(len(attachments) <= 9, "at most 9 attachments")
        sender = b.get("sender") or ""
        if sender:
            self.member(sender)
        targets: dict[str, list[str]] = {}  # userid -> targets
        fail: list[str] = []
        if chat_type == "group":
            _param(bool(sender), "sender is required for group messages")
            chats = b.get("chat_id_list")
            if chats is None:
                chats = [g.chat_id for g in self.groups.values() if g.owner == sender and not g.dismissed]
            _param(len(chats) <= 2000, "chat_id_list holds at most 2000 chats")
            for c in chats:
                g = self.groups.get(c)
                if g is None or g.dismissed or g.owner != sender:
                    fail.append(c)
                else:
                    targets.setdefault(sender, []).append(c)
        else:
            eids = b.get("external_userid")
            if eids is None:
                _param(bool(sender), "external_userid or sender is required")
                eids = [e for (u, e), f in self.follows.items() if u == sender]
            _param(len(eids) <= 10000, "external_userid holds at most 10000")
            for e in eids:
                fs = [f for f in self.follows_of_customer(e) if not sender or f.userid == sender]
                if not fs:
                    fail.append(e)
                else:
                    targets.setdefault(fs[0].userid, []).append(e)
        if not targets:
            raise SandboxError(41048, "no customer to send to")
        msgid = _rand("msg", 26)
        tpl = MsgTemplate(msgid, chat_type, sender or next(iter(targets)), self.now(), text, list(attachments))
        key = "chat_id" if chat_type == "group" else "external_userid"
        for uid, ts in targets.items():
            tpl.tasks[uid] = {"status": 0, "send_time": 0}
            tpl.results[uid] = [{key: t, "userid": uid, "status": 0, "send_time": 0} for t in ts]
        self.templates[msgid] = tpl
        return {"msgid": msgid, "fail_list": fail}

    def _template(self, msgid: str) -> MsgTemplate:
        tpl = self.templates.get(msgid)
        if tpl is None:
            raise SandboxError(40058, f"invalid msgid: {msgid}")
        return tpl

    def api_get_groupmsg_list_v2(self, b: dict) -> dict:
        chat_type = b.get("chat_type")
        _param(chat_type in ("single", "group"), "chat_type is required")
        start, end = b.get("start_time"), b.get("end_time")
        if not isinstance(start, int) or not isinstance(end, int) or start > end:
            raise SandboxError(40058, "start_time/end_time required")
        _param(end - start <= 31 * 86400, "time range exceeds one month")
        limit = self._limit(b.get("limit"), 50, 100)
        creator = b.get("creator")
        items = [t for t in sorted(self.templates.values(), key=lambda t: (t.create_time, t.msgid))
                 if t.chat_type == chat_type and start <= t.create_time <= end
                 and (not creator or t.creator == creator)]
        page, nxt = self._page(items, self._cursor(b.get("cursor")), limit)
        out = []
        for t in page:
            d: dict[str, Any] = {"msgid": t.msgid, "creator": t.creator, "create_time": t.create_time, "create_type": 0}
            if t.text:
                d["text"] = t.text
            if t.attachments:
                d["attachments"] = t.attachments
            out.append(d)
        return {"group_msg_list": out, "next_cursor": nxt}

    def api_get_groupmsg_task(self, b: dict) -> dict:
        tpl = self._template(str(b.get("msgid") or ""))
        limit = self._limit(b.get("limit"), 500, 1000)
        items = []
        for uid, t in tpl.tasks.items():
            d = {"userid": uid, "status": t["status"]}
            if t["send_time"]:
                d["send_time"] = t["send_time"]
            items.append(d)
        page, nxt = self._page(items, self._cursor(b.get("cursor")), limit)
        return {"task_list": page, "next_cursor": nxt}

    def api_get_groupmsg_send_result(self, b: dict) -> dict:
        tpl = self._template(str(b.get("msgid") or ""))
        userid = str(b.get("userid") or "")
        self.member(userid)
        limit = self._limit(b.get("limit"), 500, 1000)
        items = [dict(r) for r in tpl.results.get(userid, [])]
        page, nxt = self._page(items, self._cursor(b.get("cursor")), limit)
        return {"send_list": page, "next_cursor": nxt}

    # group robots (群机器人)
    def add_group_robot(self, chat_id: str) -> str:
        """Add a robot to a group; returns its webhook key."""
        with self.lock:
            self.group(chat_id)
            key = secrets.token_hex(18)
            self.group_robots[key] = chat_id
            self._changed()
        self.flush()
        return key

    def api_webhook_send(self, key: str, b: dict) -> dict:
        chat_id = self.group_robots.get(key)
        if chat_id is None:
            raise SandboxError(93000, "invalid webhook url")
        msgtype = b.get("msgtype")
        _param(msgtype in ("text", "markdown", "image", "news"), "msgtype must be text, markdown, image or news")
        if msgtype == "text":
            content = str((b.get("text") or {}).get("content") or "")
            _param(bool(content), "text.content is required")
            _param(len(content.encode()) <= 2048, "text.content exceeds 2048 bytes")
        if msgtype == "news":
            articles = (b.get("news") or {}).get("articles") or []
            _param(1 <= len(articles) <= 8, "news holds 1 to 8 articles")
        # WeCom: each robot may send at most 20 messages a minute.
        now = self.clock()
        times = [t for t in self.robot_message_times.get(key, []) if now - t < 60]
        if len(times) >= 20:
            raise SandboxError(45009, "api freq out of limit: 20 messages per minute per robot")
        times.append(now)
        self.robot_message_times[key] = times
        self.robot_messages.append({"chat_id": chat_id, "msgtype": msgtype, msgtype: b.get(msgtype), "time": int(now)})
        return {}

    def api_send_welcome_msg(self, b: dict) -> dict:
        code = str(b.get("welcome_code") or "")
        text = b.get("text")
        attachments = b.get("attachments") or []
        _param(bool(text and text.get("content")) or bool(attachments), "text or attachments is required")
        _param(len(attachments) <= 9, "at most 9 attachments")
        wc = self.welcome_codes.get(code)
        if wc is None or self.clock() - wc.issued_at > WELCOME_CODE_TTL:
            raise SandboxError(41050, "invalid welcome_code")
        if wc.used:
            raise SandboxError(41051, "welcome message already sent")
        wc.used = True
        self.welcome_messages.append({"welcome_code": code, "userid": wc.userid, "external_userid": wc.external_userid,
                                      "text": (text or {}).get("content"), "attachments": list(attachments),
                                      "sent_at": self.now()})
        return {}

    # app messages (reference §3.8a, §3.10)
    def _message_body(self, msgtype: str, b: dict) -> dict:
        """Validate the message content. WeCom itself truncates an over-long title / description /
        content (「超过会自动截断」); the sandbox refuses them (40058) so scrm never relies on a cut
        that WeCom would make silently."""
        if msgtype == "textcard":
            card = b.get("textcard")
            if not isinstance(card, dict):
                raise SandboxError(40058, "textcard is required")
            title, desc, url = (str(card.get(k) or "") for k in ("title", "description", "url"))
            _param(bool(title), "textcard.title is required")
            _param(len(title.encode()) <= TEXTCARD_TITLE_MAX_BYTES,
                   f"textcard.title exceeds {TEXTCARD_TITLE_MAX_BYTES} bytes")
            _param(bool(desc), "textcard.description is required")
            _param(len(desc.encode()) <= TEXTCARD_DESCRIPTION_MAX_BYTES,
                   f"textcard.description exceeds {TEXTCARD_DESCRIPTION_MAX_BYTES} bytes")
            _param(bool(url), "textcard.url is required")
            _param(url.startswith(("http://", "https://")), "textcard.url needs http:// or https://")
            _param(len(url.encode()) <= TEXTCARD_URL_MAX_BYTES, f"textcard.url exceeds {TEXTCARD_URL_MAX_BYTES} bytes")
            # btntxt: default 「详情」, at most 4 characters (WeCom cuts longer ones; so does the sandbox).
            btntxt = str(card.get("btntxt") or "详情")[:4]
            return {"title": title, "description": desc, "url": url, "btntxt": btntxt}
        text = b.get("text")
        content = str((text or {}).get("content") or "") if isinstance(text, dict) else ""
        if not content:
            raise SandboxError(44004, "text content is empty")
        _param(len(content.encode()) <= TEXT_CONTENT_MAX_BYTES, f"text.content exceeds {TEXT_CONTENT_MAX_BYTES} bytes")
        return {"content": content}

    def api_message_send(self, b: dict) -> dict:
        agentid = b.get("agentid")
        if agentid in (None, ""):
            raise SandboxError(41011, "missing agentid")
        try:
            agentid = int(agentid)
        except (TypeError, ValueError):
            raise SandboxError(40056, f"invalid agentid: {agentid}") from None
        if self.agent_id is not None and agentid != int(self.agent_id):
            raise SandboxError(40056, f"invalid agentid: {agentid}")
        msgtype = b.get("msgtype")
        if msgtype not in ("text", "textcard"):
            raise SandboxError(40008, f"invalid message type: {msgtype} (the sandbox sends text and textcard)")
        _param(not b.get("toparty") and not b.get("totag"), "the sandbox sends to touser only (no toparty/totag)")
        touser = b.get("touser")
        if not isinstance(touser, str) or not touser.strip():
            raise SandboxError(40058, "touser is required")
        content = self._message_body(msgtype, b)
        if touser.strip() == "@all":
            wanted = list(self.members)
        else:
            wanted = list(dict.fromkeys(u.strip() for u in touser.split("|") if u.strip()))
        _param(len(wanted) <= MESSAGE_MAX_TOUSER, f"touser holds at most {MESSAGE_MAX_TOUSER} members")
        # WeCom compares userids case-insensitively and answers them in lower case.
        by_lower = {uid.lower(): uid for uid in self.members}
        valid = [by_lower[u.lower()] for u in wanted if u.lower() in by_lower]
        invalid = [u.lower() for u in wanted if u.lower() not in by_lower]
        if not valid:
            raise SandboxError(81013, "user & party & tag all invalid")
        # ≤30 messages a minute from the app to the same member (reference §3.10). WeCom's own wording
        # (doc 90312, from memory) is roughly 「每应用对同一个成员不可超过30次/分，超过部分会被丢弃不下发」:
        # the excess is dropped, not refused. The sandbox instead answers 45009 (接口调用超过限制) for
        # the whole call and delivers nothing, so the limit is visible and a retry sends no duplicates.
        now = self.clock()
        limit = self.app_message_per_member_per_minute
        if limit > 0:
            for uid in valid:
                recent = [t for t in self.app_message_times.get(uid, []) if t > now - 60]
                self.app_message_times[uid] = recent
                if len(recent) + 1 > limit:
                    raise SandboxError(45009, f"api freq out of limit: {limit} messages per minute to {uid}")
        msgid = _rand("", 48)
        for uid in valid:
            self.app_message_times.setdefault(uid, []).append(now)
            self.app_messages.append({"msgid": msgid, "agentid": agentid, "touser": uid, "msgtype": msgtype,
                                      msgtype: dict(content), "time": int(now)})
        return {"invaliduser": "|".join(invalid), "invalidparty": "", "invalidtag": "", "unlicenseduser": "",
                "msgid": msgid}

    # JS-SDK agent ticket (reference §3.8a)
    def api_ticket_get(self, q: dict) -> dict:
        _param(q.get("type") == "agent_config", "type must be agent_config")
        now = self.clock()
        if self.agent_tickets_per_hour > 0:
            # WeCom limits jsapi ticket fetches per app per hour (hence: cache the ticket).
            hour = int(now // 3600)
            self.agent_ticket_calls[hour] = self.agent_ticket_calls.get(hour, 0) + 1
            if self.agent_ticket_calls[hour] > self.agent_tickets_per_hour:
                raise SandboxError(45009, "api freq out of limit: ticket/get")
        tic = self.current_agent_ticket
        if tic is None or self.agent_tickets.get(tic, 0) <= now:  # same ticket while it is valid
            tic = _rand("", 64)
            self.agent_tickets[tic] = now + self.agent_ticket_expires_in
            self.current_agent_ticket = tic
        return {"ticket": tic, "expires_in": max(1, int(round(self.agent_tickets[tic] - now)))}

    # OAuth2 (reference §3.8a)
    def api_auth_getuserinfo(self, q: dict) -> dict:
        code = str(q.get("code") or "")
        if not code:
            raise SandboxError(41008, "missing oauth code")
        oc = self.oauth_codes.get(code)
        if oc is None or oc.used or self.clock() - oc.issued_at > OAUTH_CODE_TTL:
            raise SandboxError(40029, "invalid code")
        oc.used = True
        if oc.userid:
            return {"userid": oc.userid}
        out = {"openid": oc.openid}
        if oc.external_userid:
            out["external_userid"] = oc.external_userid
        return out

    # -- inspection ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The whole corp as JSON-able data (for /sandbox/state and tests)."""
        with self.lock:
            return {
                "corp_id": self.corp_id,
                "members": [vars(m) for m in self.members.values()],
                "customers": [self._contact_json(c) for c in self.customers.values()],
                "follows": [vars(f) for f in self.follows.values()],
                "groups": [{**self.group_json(g), "dismissed": g.dismissed} for g in self.groups.values()],
                "tag_groups": [self._tag_group_json(g) for g in self.tag_groups.values()],
                "contact_ways": [self.contact_way_json(w) for w in self.contact_ways.values()],
                "join_ways": [self.join_way_json(w) for w in self.join_ways.values()],
                "templates": [{"msgid": t.msgid, "chat_type": t.chat_type, "creator": t.creator, "tasks": t.tasks,
                               "results": t.results} for t in self.templates.values()],
                "welcome_messages": list(self.welcome_messages),
                "app_messages": list(self.app_messages),
                "demo": self.demo,
            }


# Routes that change the corp (and so are saved when the sandbox persists it).
MUTATING_ROUTES = frozenset({
    "externalcontact/add_corp_tag", "externalcontact/edit_corp_tag", "externalcontact/del_corp_tag",
    "externalcontact/mark_tag", "externalcontact/add_contact_way", "externalcontact/update_contact_way",
    "externalcontact/del_contact_way", "externalcontact/groupchat/add_join_way",
    "externalcontact/groupchat/update_join_way", "externalcontact/groupchat/del_join_way",
    "externalcontact/add_msg_template", "externalcontact/send_welcome_msg", "message/send",
})

# path -> (HTTP method, handler name)
ROUTES: dict[str, tuple[str, str]] = {
    "user/list": ("GET", "api_user_list"),
    "externalcontact/get_follow_user_list": ("GET", "api_get_follow_user_list"),
    "externalcontact/get": ("GET", "api_get"),
    "externalcontact/batch/get_by_user": ("POST", "api_batch_get_by_user"),
    "externalcontact/groupchat/list": ("POST", "api_groupchat_list"),
    "externalcontact/groupchat/get": ("POST", "api_groupchat_get"),
    "externalcontact/get_corp_tag_list": ("POST", "api_get_corp_tag_list"),
    "externalcontact/add_corp_tag": ("POST", "api_add_corp_tag"),
    "externalcontact/edit_corp_tag": ("POST", "api_edit_corp_tag"),
    "externalcontact/del_corp_tag": ("POST", "api_del_corp_tag"),
    "externalcontact/mark_tag": ("POST", "api_mark_tag"),
    "externalcontact/add_contact_way": ("POST", "api_add_contact_way"),
    "externalcontact/get_contact_way": ("POST", "api_get_contact_way"),
    "externalcontact/update_contact_way": ("POST", "api_update_contact_way"),
    "externalcontact/del_contact_way": ("POST", "api_del_contact_way"),
    "externalcontact/groupchat/add_join_way": ("POST", "api_add_join_way"),
    "externalcontact/groupchat/get_join_way": ("POST", "api_get_join_way"),
    "externalcontact/groupchat/update_join_way": ("POST", "api_update_join_way"),
    "externalcontact/groupchat/del_join_way": ("POST", "api_del_join_way"),
    "externalcontact/add_msg_template": ("POST", "api_add_msg_template"),
    "externalcontact/get_groupmsg_list_v2": ("POST", "api_get_groupmsg_list_v2"),
    "externalcontact/get_groupmsg_task": ("POST", "api_get_groupmsg_task"),
    "externalcontact/get_groupmsg_send_result": ("POST", "api_get_groupmsg_send_result"),
    "externalcontact/send_welcome_msg": ("POST", "api_send_welcome_msg"),
    "message/send": ("POST", "api_message_send"),
    "ticket/get": ("GET", "api_ticket_get"),
    "auth/getuserinfo": ("GET", "api_auth_getuserinfo"),
}
assert MUTATING_ROUTES <= set(ROUTES), MUTATING_ROUTES - set(ROUTES)

"""Typed external-contact events (reference §2), parsed from decrypted callback XML.

wechatpy 1.8.18 returns UnknownMessage for all of these, so we parse them ourselves. Unknown
events and change types are kept (``UnknownEvent`` / ``known == False``) rather than crashing:
WeCom adds codes over time and a stored callback must never be lost to a parser.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scrm.wecom.crypto import MalformedCallback, reject_dtd

CONTACT = "change_external_contact"
CHAT = "change_external_chat"
TAG = "change_external_tag"

CONTACT_CHANGES = frozenset(
    {
        "add_external_contact",
        "edit_external_contact",
        "add_half_external_contact",
        "del_external_contact",
        "del_follow_user",
        "transfer_fail",
        "msg_audit_approved",
    }
)
CHAT_CHANGES = frozenset({"create", "update", "dismiss"})
CHAT_UPDATE_DETAILS = frozenset({"add_member", "del_member", "change_owner", "change_name", "change_notice"})
TAG_CHANGES = frozenset({"create", "update", "delete", "shuffle"})


@dataclass(frozen=True, slots=True)
class Event:
    corp_id: str
    create_time: int
    msg_type: str
    event: str
    change_type: str
    fields: Mapping[str, object] = field(repr=False, compare=False)

    @property
    def known(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class ContactEvent(Event):
    user_id: str = ""
    external_user_id: str = ""
    state: str | None = None
    welcome_code: str | None = None
    source: str | None = None  # del_external_contact: DELETE_BY_TRANSFER
    fail_reason: str | None = None  # transfer_fail: customer_refused | customer_limit_exceed

    @property
    def known(self) -> bool:
        return self.change_type in CONTACT_CHANGES


@dataclass(frozen=True, slots=True)
class ChatEvent(Event):
    chat_id: str = ""
    update_detail: str | None = None
    join_scene: int | None = None
    quit_scene: int | None = None
    mem_change_cnt: int | None = None
    mem_change_list: tuple[str, ...] = ()
    last_mem_ver: str | None = None
    cur_mem_ver: str | None = None

    @property
    def known(self) -> bool:
        return self.change_type in CHAT_CHANGES


@dataclass(frozen=True, slots=True)
class TagEvent(Event):
    id: str = ""  # tag id or tag-group id; empty on shuffle means every group
    tag_type: str | None = None  # tag | tag_group
    strategy_id: str | None = None

    @property
    def known(self) -> bool:
        return self.change_type in TAG_CHANGES


@dataclass(frozen=True, slots=True)
class UnknownEvent(Event):
    """Any other Event/MsgType; kept so it can be stored, counted and inspected."""


def dedup_key(plaintext: str) -> str:
    """WeCom retries re-encrypt the same plaintext, so the plaintext identifies the event (§1.7)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _int(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _opt(fields: Mapping[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    text = str(value)
    return text if text != "" else None


def _xml_fields(root: ET.Element) -> dict[str, object]:
    out: dict[str, object] = {}
    for child in root:
        if child.tag == "MemChangeList":
            items = [(i.text or "").strip() for i in child.findall("Item")]
            csv = (child.text or "").strip()
            if not items and csv:
                # Older CSV form: <MemChangeList><![CDATA[id1,id2]]></MemChangeList>
                items = [p.strip() for p in csv.split(",")]
            out["MemChangeList"] = tuple(i for i in items if i)
        else:
            out[child.tag] = (child.text or "").strip()
    return out


def parse_event(plaintext: str | bytes) -> Event:
    reject_dtd(plaintext)
    try:
        root = ET.fromstring(plaintext)
    except ET.ParseError as exc:
        raise MalformedCallback(f"decrypted message is not XML: {exc}") from exc
    if root.tag != "xml":
        raise MalformedCallback(f"root element is <{root.tag}>, expected <xml>")
    return event_from_fields(_xml_fields(root))


def event_from_fields(f: Mapping[str, object]) -> Event:
    create_time = _int(f.get("CreateTime"))
    if create_time is None:
        raise MalformedCallback("CreateTime is missing or not a number")
    kind = str(f.get("Event", ""))
    common: dict[str, Any] = dict(
        corp_id=str(f.get("ToUserName", "")),
        create_time=create_time,
        msg_type=str(f.get("MsgType", "")),
        event=kind,
        change_type=str(f.get("ChangeType", "")),
        fields=dict(f),
    )
    if kind == CONTACT:
        return ContactEvent(
            **common,
            user_id=str(f.get("UserID", "")),
            external_user_id=str(f.get("ExternalUserID", "")),
            state=_opt(f, "State"),
            welcome_code=_opt(f, "WelcomeCode"),
            source=_opt(f, "Source"),
            fail_reason=_opt(f, "FailReason"),
        )
    if kind == CHAT:
        raw = f.get("MemChangeList", ())
        if isinstance(raw, str):
            members: tuple[str, ...] = tuple(p.strip() for p in raw.split(",") if p.strip())
        elif isinstance(raw, (list, tuple)):
            members = tuple(str(m) for m in raw)
        else:
            members = ()
        return ChatEvent(
            **common,
            chat_id=str(f.get("ChatId", "")),
            update_detail=_opt(f, "UpdateDetail"),
            join_scene=_int(f.get("JoinScene")),
            quit_scene=_int(f.get("QuitScene")),
            mem_change_cnt=_int(f.get("MemChangeCnt")),
            mem_change_list=members,
            last_mem_ver=_opt(f, "LastMemVer"),
            cur_mem_ver=_opt(f, "CurMemVer"),
        )
    if kind == TAG:
        return TagEvent(
            **common,
            id=str(f.get("Id", "")),
            tag_type=_opt(f, "TagType"),
            strategy_id=_opt(f, "StrategyId"),
        )
    return UnknownEvent(**common)


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside CDATA; split it across two sections as XML requires.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_event(corp_id: str, event: str, change_type: str, create_time: int, **fields: object) -> str:
    """Plaintext event XML in WeCom's layout (used by the sandbox and tests).

    ``fields`` use WeCom's element names (UserID, ExternalUserID, ChatId, ...); a list/tuple value
    becomes nested <Item> elements (MemChangeList); ints are written without CDATA.
    """
    parts = [
        f"<xml><ToUserName>{_cdata(corp_id)}</ToUserName><FromUserName>{_cdata('sys')}</FromUserName>",
        f"<CreateTime>{int(create_time)}</CreateTime><MsgType>{_cdata('event')}</MsgType>",
        f"<Event>{_cdata(event)}</Event><ChangeType>{_cdata(change_type)}</ChangeType>",
    ]
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            items = "".join(f"<Item>{_cdata(str(v))}</Item>" for v in value)
            parts.append(f"<{name}>{items}</{name}>")
        elif isinstance(value, int):
            parts.append(f"<{name}>{value}</{name}>")
        else:
            parts.append(f"<{name}>{_cdata(str(value))}</{name}>")
    parts.append("</xml>")
    return "".join(parts)

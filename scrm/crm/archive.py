"""WeCom chat-archive lines (会话内容存档, doc 91774) as ``crm_messages`` rows.

The Finance SDK's ``DecryptData`` yields one JSON object per message; an export is those objects
one a line. Common fields: ``msgid``, ``action`` (send | recall | switch), ``from``, ``tolist``,
``roomid`` ("" for a 1:1 chat), ``msgtime`` (Unix milliseconds), ``msgtype``, and the type's object
under the key named by ``msgtype`` (``{"msgtype": "text", "text": {"content": "..."}}``).

Who is the customer: an id in the ``employees`` table is ours; otherwise an id starting with
``wm`` or ``wo`` is an external contact (a customer); anything else (an employee userid not synced
yet, a ``wb`` robot) is ours. In a 1:1 chat the customer is the external id among ``from`` and
``tolist`` and ``userid`` the employee; a 1:1 chat with no external id (two colleagues) is no
customer's and is skipped. In a group chat a customer's message is theirs (``userid`` NULL) and an
employee's message is stored with ``external_userid`` NULL: it answers no single customer.

``content`` is what a person reads: the text, or a short Chinese rendering for other types
(``[图片]``, ``[语音 12秒]``, ``[文件] 报价单.pdf``, ``[链接] 标题``). A msgtype this module does not
know is stored all the same, rendered ``[消息类型 X]`` with its object as the payload: WeCom adds
types over time and an import never fails on one. A recall (``msgtype`` revoke) is stored with
``content`` "" and ``payload`` {"pre_msgid": ...}; blanking the original is the importer's job."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from scrm.crm.models import Channel, Direction

ACTIONS = ("send", "recall", "switch")
COMMON = frozenset({"msgid", "action", "from", "tolist", "roomid", "msgtime", "msgtype", "seq"})
EXTERNAL_PREFIXES = ("wm", "wo")  # WeChat users, other corps' WeCom users; "wb" is a robot (ours)
# msgtime bounds: 2000-01-01 .. 2100-01-01 in ms; anything else is a unit mistake (seconds, µs).
_MIN_MS, _MAX_MS = 946_684_800_000, 4_102_444_800_000


class BadLine(ValueError):
    """A line that is not an archive message; the message says why (English, for the CLI)."""


@dataclass(frozen=True)
class Skipped:
    """A line that carries no customer message (``switch``, a chat between colleagues)."""

    reason: str


def _seconds(value: Any) -> str:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return ""
    return f" {n}秒" if n < 60 else f" {n // 60}分{n % 60}秒" if n % 60 else f" {n // 60}分钟"


def _s(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value.strip() if isinstance(value, str) else ""


def _mixed(obj: dict[str, Any]) -> str:
    """A 图文混排 message: its text parts, other parts as their short rendering."""
    parts = []
    for item in obj.get("item") or []:
        if not isinstance(item, dict):
            continue
        kind, inner = item.get("type"), item.get("content")
        if isinstance(inner, str):
            try:
                inner = json.loads(inner)
            except ValueError:
                inner = {"content": inner}
        if not isinstance(inner, dict):
            inner = {}
        parts.append(render(kind if isinstance(kind, str) else "", inner))
    return " ".join(p for p in parts if p) or "[图文消息]"


def render(msgtype: str, obj: dict[str, Any]) -> str:
    """What a person reads for a message of this type with this object."""
    if msgtype == "text":
        text = obj.get("content")
        return text if isinstance(text, str) else ""
    if msgtype == "markdown":
        return _s(obj, "content") or "[Markdown]"
    if msgtype == "image":
        return "[图片]"
    if msgtype == "voice":
        return f"[语音{_seconds(obj.get('play_length'))}]"
    if msgtype == "video":
        return f"[视频{_seconds(obj.get('play_length'))}]"
    if msgtype == "file":
        name = _s(obj, "filename")
        ext = _s(obj, "fileext")
        if name and ext and not name.lower().endswith("." + ext.lower()):
            name = f"{name}.{ext}"
        return f"[文件] {name}".rstrip()
    if msgtype == "link":
        return f"[链接] {_s(obj, 'title') or _s(obj, 'link_url')}".rstrip()
    if msgtype == "weapp":
        return f"[小程序] {_s(obj, 'title') or _s(obj, 'displayname')}".rstrip()
    if msgtype == "card":
        return f"[名片] {_s(obj, 'corpname')}".rstrip()
    if msgtype == "location":
        place = " ".join(p for p in (_s(obj, "title"), _s(obj, "address")) if p)
        return f"[位置] {place}".rstrip()
    if msgtype == "emotion":
        return "[表情]"
    if msgtype == "mixed":
        return _mixed(obj)
    if msgtype == "chatrecord":
        return f"[聊天记录] {_s(obj, 'title')}".rstrip()
    if msgtype == "agree":
        return "[同意会话存档]"
    if msgtype == "disagree":
        return "[不同意会话存档]"
    if msgtype == "news":
        info = obj.get("info")
        items = (info if isinstance(info, dict) else obj).get("item")
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        return f"[图文] {_s(first, 'title')}".rstrip()
    if msgtype == "calendar":
        return f"[日程] {_s(obj, 'title')}".rstrip()
    if msgtype in ("meeting", "meeting_voice_call", "voip_doc_share", "voiptext"):
        return "[会议/通话]"
    if msgtype in ("redpacket", "external_redpacket"):
        return "[红包]"
    if msgtype == "revoke":
        return ""
    return f"[消息类型 {msgtype}]"


def _id(line: dict[str, Any], key: str, limit: int) -> str:
    value = line.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadLine(f"{key!r} is missing or not text")
    if len(value) > limit:
        raise BadLine(f"{key!r} is longer than {limit} characters")
    return value.strip()


def _time(line: dict[str, Any]) -> dt.datetime:
    raw = line.get("msgtime")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadLine("'msgtime' is missing or not a number (Unix milliseconds)")
    if isinstance(raw, str):
        if not raw.strip().isdigit():
            raise BadLine(f"'msgtime' {raw!r} is not a number (Unix milliseconds)")
        raw = int(raw)
    if not _MIN_MS <= raw < _MAX_MS:
        raise BadLine(f"'msgtime' {raw} is not a time in milliseconds between 2000 and 2100")
    return dt.datetime.fromtimestamp(raw / 1000, dt.UTC)


def parse_line(text: str, employees: frozenset[str] | set[str], *, now: dt.datetime) -> dict[str, Any] | Skipped:
    """One archive line as a ``crm_messages`` row (a dict of its columns), or :class:`Skipped`;
    :class:`BadLine` when it is not an archive message."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(line, dict):
        raise BadLine("not a JSON object")
    msgid = _id(line, "msgid", 128)
    action = line.get("action")
    if action not in ACTIONS:
        raise BadLine(f"'action' is {action!r}: expected send, recall or switch")
    if action == "switch":
        return Skipped("switch")
    sender = _id(line, "from", 64)
    tolist = line.get("tolist")
    if tolist is None:
        tolist = []
    if not isinstance(tolist, list) or not all(isinstance(t, str) for t in tolist):
        raise BadLine("'tolist' must be a list of ids")
    roomid = line.get("roomid") or None
    if roomid is not None and (not isinstance(roomid, str) or len(roomid) > 64):
        raise BadLine("'roomid' must be text of at most 64 characters")
    sent_at = _time(line)
    msgtype = _id(line, "msgtype", 32)
    obj = line.get(msgtype)
    if msgtype == "revoke" or action == "recall":
        if msgtype != "revoke" or not isinstance(obj, dict) or not isinstance(obj.get("pre_msgid"), str) \
                or not obj["pre_msgid"].strip():
            raise BadLine("a recall needs msgtype 'revoke' and revoke.pre_msgid")
        payload: dict[str, Any] = {"pre_msgid": obj["pre_msgid"].strip()}
    elif isinstance(obj, dict):
        payload = obj
    elif msgtype == "text":
        raise BadLine("a text message needs text.content")
    else:  # an unknown type that does not nest its object: keep what the line carries
        payload = {k: v for k, v in line.items() if k not in COMMON}
    if msgtype == "text" and not isinstance(payload.get("content"), str):
        raise BadLine("a text message needs text.content")

    def external(who: str) -> bool:
        return who not in employees and who.startswith(EXTERNAL_PREFIXES)

    customer: str | None
    userid: str | None
    if external(sender):
        direction, customer = Direction.inbound, sender
        userid = None if roomid else next((t for t in tolist if not external(t)), None)
    else:
        direction, userid = Direction.outbound, sender
        customer = None if roomid else next((t for t in tolist if external(t)), None)
        if customer is None and not roomid:
            return Skipped("no customer in the chat")
    if customer is not None and len(customer) > 64 or userid is not None and len(userid) > 64:
        raise BadLine("an id in 'tolist' is longer than 64 characters")
    return {
        "channel": str(Channel.chat), "source_id": msgid, "external_userid": customer, "mobile": None,
        "userid": userid, "direction": str(direction), "sent_at": sent_at, "msgtype": msgtype,
        "content": render(msgtype, payload), "payload": payload, "roomid": roomid, "duration_seconds": None,
        "revoked_at": None, "created_at": now,
    }

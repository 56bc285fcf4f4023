"""Apply customer-group state (groupchat/get) to the database, diffing members."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from scrm.db import as_utc, from_unix, utcnow
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.logs import get_logger

log = get_logger(__name__)

# groupchat/get answers for a chat WeCom does not have (any more): no such chat, or dismissed.
CHAT_NOT_FOUND, CHAT_DISMISSED = 40050, 49008
MISSING_CHAT_ERRCODES = frozenset({CHAT_NOT_FOUND, CHAT_DISMISSED})


def apply_group_chat(session: Session, chat: dict, *, quit_scene: int | None = None) -> dict[str, list[str]]:
    """Make the stored group equal to ``chat``; returns who joined and who left."""
    chat_id = chat["chat_id"]
    group = session.get(CustomerGroup, chat_id)
    if group is None:
        group = CustomerGroup(chat_id=chat_id)
        session.add(group)
    group.name = chat.get("name", group.name) or ""
    group.owner_userid = chat.get("owner", group.owner_userid)
    group.notice = chat.get("notice", group.notice)
    group.created_at = from_unix(chat.get("create_time")) or group.created_at
    group.member_version = chat.get("member_version", group.member_version)
    group.status = GroupStatus.active
    group.synced_at = group.updated_at = utcnow()

    stored = {m.member_id: m for m in session.exec(select(GroupMember).where(GroupMember.chat_id == chat_id))}
    current = {m["userid"]: m for m in chat.get("member_list", [])}
    joined, left = [], []
    now = utcnow()
    for member_id, info in current.items():
        row = stored.get(member_id)
        if row is None:
            row = GroupMember(chat_id=chat_id, member_id=member_id)
            session.add(row)
            joined.append(member_id)
        elif row.state != MemberState.member:
            joined.append(member_id)
        # Only a member whose values changed is written: a join or leave re-reads the whole group,
        # and rewriting every member's row made each event cost one UPDATE per member.
        _set_changed(row, now, member_type=info.get("type", row.member_type),
                     unionid=info.get("unionid", row.unionid), name=info.get("name", row.name),
                     group_nickname=info.get("group_nickname", row.group_nickname),
                     join_scene=info.get("join_scene", row.join_scene), join_state=info.get("state", row.join_state),
                     invitor=(info.get("invitor") or {}).get("userid", row.invitor),
                     joined_at=from_unix(info.get("join_time")) or row.joined_at,
                     state=MemberState.member, left_at=None, quit_scene=None)
    for member_id, row in stored.items():
        if member_id not in current and row.state == MemberState.member:
            row.state, row.left_at, row.quit_scene, row.updated_at = MemberState.left, now, quit_scene, now
            left.append(member_id)
    return {"joined": joined, "left": left}


def _set_changed(row: GroupMember, now: datetime, **values: object) -> None:
    """Set the values that differ (times compared as UTC: SQLite hands them back naive) and, if
    any did, ``updated_at``."""
    changed = row.id is None
    for name, value in values.items():
        old = getattr(row, name)
        same = (as_utc(old) == as_utc(value) if isinstance(old, datetime) and isinstance(value, datetime)
                else old == value)
        if not same:
            setattr(row, name, value)
            changed = True
    if changed:
        row.updated_at = now


def mark_dismissed(session: Session, chat_id: str) -> None:
    group = session.get(CustomerGroup, chat_id)
    if group is None:
        group = CustomerGroup(chat_id=chat_id)
        session.add(group)
    group.status, group.updated_at = GroupStatus.dismissed, utcnow()


def mark_missing(session: Session, chat_id: str, errcode: int) -> str | None:
    """WeCom answered groupchat/get with 40050 (no such chat) or 49008 (dismissed): the group
    is kept for history but leaves plans and pages. Used by the full sync and by the callback
    worker, so both record it the same way.

    49008 marks it ``dismissed`` (as a dismiss callback does); 40050 marks an active group
    ``gone`` (a dismissed one stays dismissed, the more precise word). A chat scrm never stored
    is not added for 40050. Returns the status the group now has, None when none is stored."""
    if errcode == CHAT_DISMISSED:
        mark_dismissed(session, chat_id)
        return GroupStatus.dismissed
    if errcode != CHAT_NOT_FOUND:
        raise ValueError(f"errcode {errcode} does not say a chat is missing")
    group = session.get(CustomerGroup, chat_id)
    if group is None:
        return None
    if group.status == GroupStatus.active:
        group.status, group.updated_at = GroupStatus.gone, utcnow()
    return group.status

"""Store QR codes in WeCom: one "contact me" code per staff member, one group live code per store.

The group live code (加入群聊) lists up to 5 of the store's groups. WeCom lets at most 200
members join a group through a QR code, so the list is kept to groups that still have room
(oldest first, so groups fill one after another) and never to a dismissed group. When every group
is full the list keeps the newest one with auto_create_room=1, and WeCom opens a new room; that
room's members carry the store's state, which is how scrm learns the room belongs to the store.
Refreshed on a schedule and after member events.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlmodel import Session, col, select

from scrm.db import SessionFactory, utcnow
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.logs import get_logger
from scrm.routing.state import group_state, parse_state, staff_state
from scrm.stores.models import CodeStatus, Store, StoreCode, StoreStaff, StoreStatus
from scrm.tags.models import Tag, TagGroup
from scrm.wecom.api import ContactWayAPI, CorpTagAPI, JoinWayAPI
from scrm.wecom.errors import WeComAPIError

log = get_logger(__name__)
MAX_JOIN_WAY_CHATS = 5
STORE_TAG_GROUP = "门店"


@dataclass
class CodesReport:
    created: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)  # "store/userid: reason"


# -- staff "contact me" codes -------------------------------------------------------------------

def ensure_staff_codes(session_factory: SessionFactory, client: ContactWayAPI, *,
                       store_codes: list[str] | None = None) -> CodesReport:
    """Every store staff member has an active contact-way code carrying the store; codes of
    staff who left the store are deleted in WeCom."""
    report = CodesReport()
    with session_factory() as s:
        q = select(StoreStaff)
        if store_codes:
            q = q.where(col(StoreStaff.store_code).in_(store_codes))
        staff = {(r.store_code, r.userid) for r in s.exec(q)}
        stores = {st.code: st for st in s.exec(select(Store))}
        codes = {(c.store_code, c.userid): c for c in s.exec(select(StoreCode).where(StoreCode.kind == "staff"))
                 if not store_codes or c.store_code in store_codes}
        todo: list[StoreCode] = []
        for key in sorted(staff):
            code = codes.get(key)
            if code and code.status == CodeStatus.active and code.config_id:
                report.unchanged += 1
                continue
            if code is None:
                code = StoreCode(store_code=key[0], kind="staff", userid=key[1],
                                 state=f"pending:{key[0]}:{key[1]}"[:30])
                s.add(code)
                s.flush()
                assert code.id is not None  # the flush gave it its id
                code.state = staff_state(key[0], code.id)
            todo.append(code)
        gone = [c for key, c in codes.items() if key not in staff and c.status == CodeStatus.active]
        s.commit()
        for code in todo:
            store = stores.get(code.store_code)
            try:
                made = client.add_contact_way(type=1, scene=2, state=code.state, user=[code.userid],
                                              remark=(store.name if store else code.store_code)[:30],
                                              skip_verify=True)
                code.config_id, code.qr_code = made["config_id"], made.get("qr_code")
                code.status, code.error = CodeStatus.active, None
                report.created += 1
            except WeComAPIError as exc:  # e.g. 41054 the member is not activated for customer contact
                code.status, code.error = CodeStatus.failed, f"errcode {exc.errcode}: {exc.errmsg}"[:500]
                report.failed.append(f"{code.store_code}/{code.userid}: {code.error}")
                log.warning("store_staff_code_failed", store=code.store_code, userid=code.userid, errcode=exc.errcode)
            code.updated_at = utcnow()
            s.add(code)
            s.commit()
        for code in gone:
            try:
                if code.config_id:
                    client.del_contact_way(code.config_id)
            except WeComAPIError as exc:
                log.warning("store_staff_code_delete_failed", store=code.store_code, userid=code.userid,
                            errcode=exc.errcode)
            code.status, code.updated_at = CodeStatus.removed, utcnow()
            s.add(code)
            s.commit()
            report.removed += 1
    return report


# -- the store's group live code ----------------------------------------------------------------

def store_groups(session: Session, store_code: str) -> list[tuple[CustomerGroup, int]]:
    """The store's active groups with their member counts, oldest first."""
    groups = session.exec(select(CustomerGroup).where(CustomerGroup.store_code == store_code,
                                                      CustomerGroup.status == GroupStatus.active)).all()
    counts = dict(session.exec(
        select(GroupMember.chat_id, func.count())
        .where(GroupMember.state == MemberState.member, col(GroupMember.chat_id).in_([g.chat_id for g in groups]))
        .group_by(GroupMember.chat_id)
    ).all()) if groups else {}
    groups = sorted(groups, key=lambda g: (g.created_at is None, g.created_at or utcnow(), g.chat_id))
    return [(g, counts.get(g.chat_id, 0)) for g in groups]


def choose_join_way_chats(groups: list[tuple[CustomerGroup, int]], cap: int) -> list[str]:
    """Up to 5 groups that still have room, oldest first; if none has room, the newest group,
    so that WeCom's auto_create_room opens a new one."""
    open_ = [g.chat_id for g, n in groups if n < cap]
    if open_:
        return open_[:MAX_JOIN_WAY_CHATS]
    return [groups[-1][0].chat_id] if groups else []


def refresh_group_code(session_factory: SessionFactory, client: JoinWayAPI, store_code: str, *, cap: int = 200,
                       room_base_id: int = 1) -> str:
    """Create or update the store's group live code; returns created|updated|unchanged|no_groups|failed."""
    with session_factory() as s:
        store = s.get(Store, store_code)
        if store is None:
            raise ValueError(f"unknown store {store_code!r}")
        chats = choose_join_way_chats(store_groups(s, store_code), cap)
        code = s.exec(select(StoreCode).where(StoreCode.store_code == store_code, StoreCode.kind == "group")).first()
        if not chats:
            return "no_groups"
        if code and code.status == CodeStatus.active and code.config_id and code.chat_ids == chats:
            return "unchanged"
        state = group_state(store_code)
        body = dict(scene=2, remark=store.name[:30], auto_create_room=1, room_base_name=f"{store.name}福利群"[:40],
                    room_base_id=room_base_id, chat_id_list=chats, state=state)
        if code is None:
            code = StoreCode(store_code=store_code, kind="group", userid="", state=state)
        try:
            if code.config_id:
                client.update_join_way(code.config_id, **body)
                outcome = "updated"
            else:
                code.config_id = client.add_join_way(**body)
                outcome = "created"
            code.qr_code = client.get_join_way(code.config_id).get("qr_code") or code.qr_code
            code.chat_ids, code.status, code.error = chats, CodeStatus.active, None
        except WeComAPIError as exc:
            code.status, code.error = CodeStatus.failed, f"errcode {exc.errcode}: {exc.errmsg}"[:500]
            outcome = "failed"
            log.warning("store_group_code_failed", store=store_code, errcode=exc.errcode)
        code.updated_at = utcnow()
        s.add(code)
        s.commit()
        if outcome != "failed":
            log.info("store_group_code_" + outcome, store=store_code, chats=len(chats))
        return outcome


def refresh_all_group_codes(session_factory: SessionFactory, client: JoinWayAPI, *, cap: int = 200,
                            room_base_id: int = 1) -> dict[str, int]:
    with session_factory() as s:
        codes = [st.code for st in s.exec(select(Store).where(Store.status == StoreStatus.open))]
    outcomes: dict[str, int] = defaultdict(int)
    for code in codes:
        outcomes[refresh_group_code(session_factory, client, code, cap=cap, room_base_id=room_base_id)] += 1
    return dict(outcomes)


# -- attribution ---------------------------------------------------------------------------------

def attribute_group_to_store(session: Session, chat_id: str) -> str | None:
    """A group with no store whose members joined through a store's code belongs to that store
    (the rooms WeCom opens when a store's groups are full)."""
    group = session.get(CustomerGroup, chat_id)
    if group is None or group.store_code:
        return group.store_code if group else None
    for state in session.exec(select(GroupMember.join_state).where(GroupMember.chat_id == chat_id,
                                                                   col(GroupMember.join_state).is_not(None))):
        ref = parse_state(state)
        if ref and session.get(Store, ref.store_code):
            group.store_code = ref.store_code
            session.add(group)
            log.info("group_attributed_to_store", chat_id=chat_id, store=ref.store_code)
            return ref.store_code
    return None


# -- the store tag -------------------------------------------------------------------------------

def store_tag_id(session_factory: SessionFactory, client: CorpTagAPI, store: Store) -> str:
    """The corp tag 门店/<store name>, created in WeCom the first time it is needed."""
    with session_factory() as s:
        group = s.exec(select(TagGroup).where(TagGroup.name == STORE_TAG_GROUP,
                                              TagGroup.deleted == False)).first()  # noqa: E712
        if group:
            tag = s.exec(select(Tag).where(Tag.group_id == group.group_id, Tag.name == store.name,
                                           Tag.deleted == False)).first()  # noqa: E712
            if tag:
                return tag.tag_id
    made = client.add_corp_tag(group_id=group.group_id if group else None,
                               group_name=None if group else STORE_TAG_GROUP, tags=[{"name": store.name}])
    tag = next(t for t in made.get("tag", []) if t.get("name") == store.name)
    with session_factory() as s:
        if s.get(TagGroup, made["group_id"]) is None:
            s.add(TagGroup(group_id=made["group_id"], name=made.get("group_name") or STORE_TAG_GROUP))
        if s.get(Tag, tag["id"]) is None:
            s.add(Tag(tag_id=tag["id"], group_id=made["group_id"], name=store.name))
        s.commit()
    return tag["id"]

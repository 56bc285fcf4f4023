"""Mirror the corp tag library: any tag event re-reads the whole list (reference §2.3)."""

from __future__ import annotations

from sqlmodel import Session, select

from scrm.db import from_unix, utcnow
from scrm.tags.models import Tag, TagGroup


def apply_tag_library(session: Session, tag_groups: list[dict]) -> int:
    """Upsert every group and tag; anything no longer listed is marked deleted. Returns tag count."""
    seen_groups, seen_tags = set(), set()
    for g in tag_groups:
        gid = g["group_id"]
        seen_groups.add(gid)
        row = session.get(TagGroup, gid) or TagGroup(group_id=gid, name=g.get("group_name", ""))
        row.name, row.order = g.get("group_name", row.name), g.get("order", 0) or 0
        row.created_at, row.deleted, row.updated_at = from_unix(g.get("create_time")), bool(g.get("deleted")), utcnow()
        session.add(row)
        for t in g.get("tag", []):
            seen_tags.add(t["id"])
            tag = session.get(Tag, t["id"]) or Tag(tag_id=t["id"], group_id=gid, name=t.get("name", ""))
            tag.group_id, tag.name, tag.order = gid, t.get("name", tag.name), t.get("order", 0) or 0
            tag.created_at, tag.deleted = from_unix(t.get("create_time")), bool(t.get("deleted"))
            tag.updated_at = utcnow()
            session.add(tag)
    for row in session.exec(select(TagGroup).where(TagGroup.deleted == False)):  # noqa: E712
        if row.group_id not in seen_groups:
            row.deleted = True
    for tag in session.exec(select(Tag).where(Tag.deleted == False)):  # noqa: E712
        if tag.tag_id not in seen_tags:
            tag.deleted = True
    return len(seen_tags)


def record_tag_group(session: Session, group: dict) -> None:
    """Upsert one group and the tags listed with it (e.g. what add_corp_tag answered), leaving the
    rest of the mirror alone: scrm's own API changes fire no tag event, yet the mirror must know
    the tags scrm made, or a reconcile would take them for deleted."""
    gid = group["group_id"]
    row = session.get(TagGroup, gid) or TagGroup(group_id=gid, name=group.get("group_name", ""))
    row.name = group.get("group_name", row.name) or row.name
    row.created_at = from_unix(group.get("create_time")) or row.created_at
    row.deleted, row.updated_at = False, utcnow()
    session.add(row)
    for t in group.get("tag", []):
        tag = session.get(Tag, t["id"]) or Tag(tag_id=t["id"], group_id=gid, name=t.get("name", ""))
        tag.group_id, tag.name = gid, t.get("name", tag.name)
        tag.created_at = from_unix(t.get("create_time")) or tag.created_at
        tag.deleted, tag.updated_at = False, utcnow()
        session.add(tag)


def record_tag_name(session: Session, tag_or_group_id: str, name: str) -> None:
    """After scrm's own edit_corp_tag: the mirror takes the new name (no tag event comes for it)."""
    tag = session.get(Tag, tag_or_group_id)
    if tag is not None:
        tag.name, tag.updated_at = name, utcnow()
        session.add(tag)
        return
    grp = session.get(TagGroup, tag_or_group_id)
    if grp is not None:
        grp.name, grp.updated_at = name, utcnow()
        session.add(grp)

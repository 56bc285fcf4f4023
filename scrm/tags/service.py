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

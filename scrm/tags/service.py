"""Mirror the corp tag library: any tag event re-reads the whole list (reference §2.3)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from scrm.db import as_utc, from_unix, utcnow
from scrm.tags.models import Tag, TagGroup


def apply_tag_library(session: Session, tag_groups: list[dict]) -> int:
    """Upsert every group and tag; anything no longer listed is marked deleted. Returns tag count.

    The stored library is read in two queries and only rows whose values changed are written
    (``updated_at`` is when a row last changed): a tag event re-reads the whole library, and
    one query per tag made each tag event cost hundreds of round trips."""
    stored_groups = {g.group_id: g for g in session.exec(select(TagGroup))}
    stored_tags = {t.tag_id: t for t in session.exec(select(Tag))}
    now = utcnow()
    seen_groups, seen_tags = set(), set()
    for g in tag_groups:
        gid = g["group_id"]
        seen_groups.add(gid)
        row = stored_groups.get(gid)
        if row is None:
            row = stored_groups[gid] = TagGroup(group_id=gid, name=g.get("group_name", ""))
            session.add(row)
        _set_changed(row, now, name=g.get("group_name", row.name), order=g.get("order", 0) or 0,
                     created_at=from_unix(g.get("create_time")), deleted=bool(g.get("deleted")))
        for t in g.get("tag", []):
            seen_tags.add(t["id"])
            tag = stored_tags.get(t["id"])
            if tag is None:
                tag = stored_tags[t["id"]] = Tag(tag_id=t["id"], group_id=gid, name=t.get("name", ""))
                session.add(tag)
            _set_changed(tag, now, group_id=gid, name=t.get("name", tag.name), order=t.get("order", 0) or 0,
                         created_at=from_unix(t.get("create_time")), deleted=bool(t.get("deleted")))
    for row in stored_groups.values():
        if row.group_id not in seen_groups and not row.deleted:
            row.deleted, row.updated_at = True, now
    for tag in stored_tags.values():
        if tag.tag_id not in seen_tags and not tag.deleted:
            tag.deleted, tag.updated_at = True, now
    return len(seen_tags)


def _set_changed(row: Tag | TagGroup, now, **values) -> None:
    """Set the values that differ (times compared as UTC: SQLite hands them back naive) and, if
    any did, ``updated_at``."""
    changed = False
    for name, value in values.items():
        old = getattr(row, name)
        same = (as_utc(old) == as_utc(value)) if isinstance(old, datetime) or isinstance(value, datetime) \
            else old == value
        if not same:
            setattr(row, name, value)
            changed = True
    if changed or row.updated_at is None:
        row.updated_at = now


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

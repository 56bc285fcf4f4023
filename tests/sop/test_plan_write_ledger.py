"""Writing a day's plan into the ledger (SQLite, and PostgreSQL's array path): the rows written are
the plan ``plan_day`` makes, slots and mass sequence numbers handed out as an oracle written here
says; a replan keeps what did not change and replaces what did; a row another writer put in the
ledger after the plan was read is counted as a conflict, never doubled."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlmodel import Session

from scrm.groups.models import CustomerGroup
from scrm.sop import service
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.planner import GroupInfo, Limits, plan_day, window_end_seconds
from scrm.sop.service import replan_day
from scrm.sop.template import SopTemplate
from scrm.stores.models import Store

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)  # a Tuesday
EARLY = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.UTC)  # 04:00 local on DAY
CITIES = ["上海", "北京", "深圳"]
GROUPS = 240


def templates(edit: bool = False) -> list[SopTemplate]:
    """Eight templates over all groups, cities, tags and layers, mass sends and owner tasks; with
    ``edit`` one template's text and another's time changed."""
    out = []
    for i in range(8):
        steps = [{"at": f"{8 + (i * 3 + k * 5) % 13:02d}:{(i * 7) % 60:02d}",
                  "channel": "mass_send" if (i + k) % 3 == 0 else "owner_task",
                  "text": "{{ store.name }} 福利" if i % 2 else "今日福利"} for k in range(1 + i % 3)]
        if edit and i == 5:
            steps[0]["text"] = "今日福利（改）"
        if edit and i == 2:
            steps[0]["at"] = "17:45"
        targets = [{}, {"cities": ["上海"]}, {"group_tags": ["office"]}, {"layers": ["vip"]}][i % 4]
        out.append(SopTemplate.model_validate({"id": f"t{i}", "name": f"t{i}", "priority": (i * 37) % 101,
                                               "targets": targets, "steps": steps}))
    return out


def group_infos() -> list[GroupInfo]:
    return [GroupInfo(chat_id=f"wr{i:04d}", owner=f"bot{i % 7}", store_code=f"S{i % 10}", city=CITIES[i % 10 % 3],
                      tags=frozenset({"office"} if i % 4 == 0 else ()), layer="vip" if i % 3 == 0 else None,
                      name=f"群{i}")
            for i in range(GROUPS)]


@pytest.fixture
def world(engine):
    with Session(engine) as s:
        for j in range(10):
            s.add(Store(code=f"S{j}", name=f"店{j}", city=CITIES[j % 3]))
        for g in group_infos():
            s.add(CustomerGroup(chat_id=g.chat_id, name=g.name, owner_userid=g.owner, store_code=g.store_code,
                                tags=sorted(g.tags), layer=g.layer))
        s.commit()
    return engine


def utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def expected_ledger(tpls: list[SopTemplate]) -> dict[tuple, tuple]:
    """The oracle: plan_day's posts for an empty ledger; each group's posts in (template, step)
    order take slots 1, 2, 3 and its mass sends mass_seq 1, 2...; times in UTC, the window's end by
    the planner's rule. Written without scrm.sop.service."""
    plan = plan_day(DAY, tpls, group_infos(), Limits(), now=EARLY.astimezone(TZ).replace(tzinfo=None))
    by_chat = defaultdict(list)
    for p in plan.posts:
        by_chat[p.chat_id].append(p)
    out = {}
    for chat_id, posts in by_chat.items():
        mass = 0
        for slot, p in enumerate(sorted(posts, key=lambda p: (p.template_id, p.step_key)), 1):
            if p.channel == "mass_send":
                mass += 1
            midnight = dt.datetime.combine(DAY, dt.time(0, 0))
            seconds = int((p.at - midnight).total_seconds())
            ends = midnight + dt.timedelta(seconds=window_end_seconds(seconds, Limits()))
            out[(chat_id, p.template_id, p.step_key)] = (
                slot, mass if p.channel == "mass_send" else None, p.digest, p.channel, p.sender, p.priority,
                p.at.replace(tzinfo=TZ).astimezone(dt.UTC), ends.replace(tzinfo=TZ).astimezone(dt.UTC),
                PostStatus.planned.value, 0)
    return out


def written(engine) -> dict[tuple, tuple]:
    c = SopPost.__table__.c
    with engine.connect() as conn:
        return {(r.chat_id, r.template_id, r.step_key): (
            r.slot, r.mass_seq, r.template_digest, r.channel, r.sender, r.priority, utc(r.scheduled_for),
            utc(r.window_ends_at), r.status, r.attempts)
            for r in conn.execute(select(SopPost.__table__).where(c.day == DAY))}


def ids(engine) -> dict[tuple, int]:
    c = SopPost.__table__.c
    with engine.connect() as conn:
        return {(r.chat_id, r.template_id, r.step_key): r.id
                for r in conn.execute(select(c.id, c.chat_id, c.template_id, c.step_key).where(c.day == DAY))}


def test_the_written_ledger_is_the_plan_with_slots_handed_out_in_step_order(world):
    """First plan into an empty ledger, then a replan after an edit, then one with nothing changed.
    Tried: fit_to_ledger handing out a group's highest free slot first (free_slots.pop()): the
    slots differed; the PostgreSQL insert writing window_ends_at from scheduled_for: the windows
    differed; a replan keeping a row whose digest changed: the edited step's rows were stale."""
    engine = world
    want = expected_ledger(templates())
    assert len(want) > 2 * GROUPS  # most groups get 3 posts: slots 1..3 all used

    first = replan_day(engine, templates(), DAY, Limits(), tz=TZ, now=EARLY)
    assert (first.inserted, first.kept, first.removed, first.conflicts) == (len(want), 0, 0, 0)
    assert written(engine) == want

    before = ids(engine)
    edited = replan_day(engine, templates(edit=True), DAY, Limits(), tz=TZ, now=EARLY)
    want_edited = expected_ledger(templates(edit=True))
    after = ids(engine)
    unchanged = {k for k in want_edited if want.get(k) and want[k][2:8] == want_edited[k][2:8]}
    assert 0 < edited.inserted < len(want_edited) and edited.removed > 0
    assert edited.kept == len(unchanged) and edited.inserted == len(want_edited) - len(unchanged)
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}  # kept rows are the same rows
    # Slots of kept rows stay where they were; the rest fill the free slots: compare all but slots.
    got = written(engine)
    assert {k: v[2:] for k, v in got.items()} == {k: v[2:] for k, v in want_edited.items()}
    per_group = defaultdict(list)
    for (chat_id, _, _), v in got.items():
        per_group[chat_id].append(v)
    assert all(sorted(v[0] for v in rows) == list(range(1, len(rows) + 1)) for rows in per_group.values())
    assert all(sum(v[3] == "mass_send" for v in rows) == sum(v[1] is not None for v in rows) <= 1
               for rows in per_group.values())

    again = replan_day(engine, templates(edit=True), DAY, Limits(), tz=TZ, now=EARLY)
    assert (again.kept, again.inserted, again.removed) == (len(want_edited), 0, 0)
    assert ids(engine) == after


def test_a_row_another_writer_put_in_after_the_plan_was_read_is_a_conflict_not_a_double(world, monkeypatch):
    """Between fitting and writing, another connection commits a row holding group wr0001's first
    slot (a writer that does not take the advisory lock): the new row for that slot is skipped and
    counted as a conflict, everything else is written, the group keeps at most 3 posts.
    Tried: _insert_new returning len(rows) (conflicts 0: the count was wrong); the PostgreSQL
    insert without ON CONFLICT DO NOTHING (IntegrityError)."""
    engine = world
    real_fit = service.fit_to_ledger

    def fit_then_someone_writes(plan, ledger, limits, *, tz):
        fitted = real_fit(plan, ledger, limits, tz=tz)
        with Session(engine) as s:
            s.add(SopPost(day=DAY, chat_id="wr0001", slot=1, template_id="manual", step_key="1",
                          template_digest="d", channel="owner_task", sender="bot1",
                          scheduled_for=EARLY + dt.timedelta(hours=10), window_ends_at=EARLY + dt.timedelta(hours=12)))
            s.commit()
        return fitted

    monkeypatch.setattr(service, "fit_to_ledger", fit_then_someone_writes)
    want = expected_ledger(templates())
    result = replan_day(engine, templates(), DAY, Limits(), tz=TZ, now=EARLY)
    assert result.conflicts == 1 and result.inserted == len(want) - 1
    got = written(engine)
    lost = [k for k in want if k not in got]
    assert len(lost) == 1 and lost[0][0] == "wr0001" and want[lost[0]][0] == 1
    assert got[("wr0001", "manual", "1")][0] == 1
    assert {k: v for k, v in got.items() if k[1] != "manual"} == {k: v for k, v in want.items() if k != lost[0]}

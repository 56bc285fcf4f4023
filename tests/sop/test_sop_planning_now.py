"""Planning into the real ledger (SQLite and PostgreSQL) as of a time of day: a post whose window
has already ended is never written (it would only expire and be flagged), one whose time has
passed with its window still open is written and claimed at once; and a template printing store
fields is never planned for a group without a store."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from scrm.config import SopSettings
from scrm.groups.models import CustomerGroup
from scrm.sop import jobs
from scrm.sop.models import SopPost
from scrm.sop.planner import Limits
from scrm.sop.service import claim_due, expire_overdue, replan_day
from scrm.sop.template import SopTemplate
from scrm.stores.models import Store

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)


def local(hour, minute=0, day=DAY):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=TZ).astimezone(dt.UTC)


def templates() -> dict[str, SopTemplate]:
    def make(tid, priority, at, channel, text):
        return SopTemplate.model_validate({"id": tid, "name": tid, "priority": priority,
                                           "steps": [{"at": at, "channel": channel, "text": text}]})

    return {t.id: t for t in [
        make("breakfast", 90, "08:00", "mass_send", "{{ weekday }}早安☀️ {{ store.name }}的早餐已经备好啦～"),
        make("lunch", 80, "11:00", "owner_task", "午餐套餐来了"),
        make("flash", 70, "15:00", "owner_task", "{{ store.name }} 15:00 秒杀开始"),
    ]}


def add_groups(engine):
    with Session(engine) as s:
        s.add(Store(code="A", name="南京西路店", city="上海"))
        s.add(CustomerGroup(chat_id="wrA", name="A店福利群", owner_userid="owner_a", store_code="A"))
        s.add(CustomerGroup(chat_id="wrNone", name="内测群", owner_userid="owner_a"))
        s.add(CustomerGroup(chat_id="wrGone", name="旧店群", owner_userid="owner_a", store_code="CLOSED"))
        s.commit()


def utc(value: dt.datetime) -> dt.datetime:
    """A ledger time as aware UTC (SQLite gives it back naive)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def ledger(engine) -> dict[tuple[str, str], SopPost]:
    with Session(engine) as s:
        return {(p.chat_id, p.template_id): p for p in s.exec(select(SopPost).where(SopPost.day == DAY))}


LIMITS = Limits(spread=dt.timedelta(0), min_spacing=dt.timedelta(0), window=dt.timedelta(hours=3))


def test_planning_late_in_the_morning_writes_no_post_whose_window_has_ended(engine):
    add_groups(engine)
    now = local(11, 49)
    result = replan_day(engine, list(templates().values()), DAY, LIMITS, tz=TZ, now=now)
    rows = ledger(engine)
    # The 08:00 breakfast closed at 11:00: not written, counted as too late. The 11:00 lunch is
    # late but open until 14:00: written, and claimed at once.
    assert ("wrA", "breakfast") not in rows
    assert result.plan.dropped_counts[("breakfast", "1", "too_late")] == 1
    lunch = rows[("wrA", "lunch")]
    assert lunch.status == "planned" and utc(lunch.scheduled_for) == local(11)
    assert utc(lunch.window_ends_at) == local(14)
    assert sorted(rows) == [("wrA", "flash"), ("wrA", "lunch"), ("wrGone", "lunch"), ("wrNone", "lunch")]
    lunches = sorted(p.id for (_, tid), p in rows.items() if tid == "lunch")
    assert claim_due(engine, now) == {"owner_task": lunches}
    # Nothing planned this morning expires half a minute later (what `scrm sop budget` flagged).
    assert expire_overdue(engine, now + dt.timedelta(seconds=30)) == 0


def test_groups_without_a_store_get_no_post_printing_store_fields(engine):
    add_groups(engine)
    result = replan_day(engine, list(templates().values()), DAY, LIMITS, tz=TZ, now=local(6))
    assert sorted(ledger(engine)) == [("wrA", "breakfast"), ("wrA", "flash"), ("wrA", "lunch"),
                                      ("wrGone", "lunch"), ("wrNone", "lunch")]
    counts = result.plan.dropped_counts
    assert counts[("breakfast", "1", "no_store")] == counts[("flash", "1", "no_store")] == 2


def test_plan_ahead_uses_the_configured_window_and_the_clock(engine, tmp_path):
    add_groups(engine)
    sop = SopSettings(templates_dir=tmp_path, spread_minutes=0, min_spacing_minutes=0, owner_task_window_minutes=60)
    # At 12:05 with a one-hour window the 11:00 lunch closed at 12:00 as well.
    [today, tomorrow] = jobs.plan_ahead(engine, sop, now=local(12, 5), templates=templates())
    assert sorted(ledger(engine)) == [("wrA", "flash")]
    assert today.plan.dropped_counts[("lunch", "1", "too_late")] == 3
    assert today.plan.dropped_counts[("breakfast", "1", "too_late")] == 1
    assert tomorrow.inserted == 5 and not any(r == "too_late" for _, _, r in tomorrow.plan.dropped_counts)
    # Re-planning later the same day keeps what was written and adds nothing that has passed.
    [again, _] = jobs.plan_ahead(engine, sop, now=local(16, 30), templates=templates())
    assert (again.kept, again.inserted, again.removed) == (0, 0, 0)
    assert sorted(ledger(engine)) == [("wrA", "flash")]

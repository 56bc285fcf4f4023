"""The ledger holds the limits by itself: two schedulers planning and firing at once, and rows
written behind the planner's back. Runs on SQLite and PostgreSQL (where it matters most)."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from scrm.groups.models import CustomerGroup
from scrm.sop.models import SopPost
from scrm.sop.planner import Limits
from scrm.sop.service import claim_due, replan_day
from scrm.sop.template import SopTemplate

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
EARLY = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.timezone.utc)  # 04:00 local on DAY


def templates(variant: int) -> list[SopTemplate]:
    """Two schedulers with different template sets (one saw an edit the other did not)."""
    out = []
    for i in range(6):
        out.append(SopTemplate.model_validate({
            "id": f"t{i}", "name": f"t{i}", "priority": (i * 17 + variant * 40) % 100,
            "steps": [{"at": f"{9 + i * 2 + variant % 2}:00", "text": "x",
                       "channel": "mass_send" if (i + variant) % 2 else "owner_task"}],
        }))
    return out


@pytest.fixture
def groups(engine):
    with Session(engine) as s:
        for i in range(30):
            s.add(CustomerGroup(chat_id=f"wr{i:03d}", name=f"群{i}", owner_userid=f"bot{i % 3}"))
        s.commit()
    return engine


def check_limits(engine) -> None:
    t = SopPost.__table__.c
    with engine.connect() as conn:
        per_group = conn.execute(select(t.chat_id, t.day, func.count()).group_by(t.chat_id, t.day)).all()
        mass = conn.execute(select(t.chat_id, t.day, func.count()).where(t.channel == "mass_send")
                            .group_by(t.chat_id, t.day)).all()
        steps = conn.execute(select(t.chat_id, t.day, t.template_id, t.step_key, func.count())
                             .group_by(t.chat_id, t.day, t.template_id, t.step_key)).all()
    assert per_group and max(n for *_, n in per_group) <= 3
    assert max(n for *_, n in mass) <= 1
    assert max(n for *_, n in steps) == 1


def test_two_schedulers_planning_at_once_never_exceed_the_limits(groups):
    engine = groups
    errors = []

    def scheduler(variant):
        try:
            for _ in range(4):
                replan_day(engine, templates(variant), DAY, Limits(), tz=TZ, now=EARLY)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler, args=(v,)) for v in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    check_limits(engine)


def test_two_schedulers_firing_at_once_claim_each_post_once(groups):
    engine = groups
    replan_day(engine, templates(0), DAY, Limits(), tz=TZ, now=EARLY)
    late = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.timezone.utc)  # 17:30 local
    t = SopPost.__table__.c
    with engine.connect() as conn:
        eligible = {r.id for r in conn.execute(
            select(t.id).where(t.scheduled_for <= late, t.window_ends_at > late))}
    assert len(eligible) >= 30
    results: list[dict] = []
    barrier = threading.Barrier(2)

    def scheduler():
        barrier.wait()
        results.append(claim_due(engine, late))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    claimed = Counter(i for r in results for ids in r.values() for i in ids)
    assert set(claimed) == eligible and set(claimed.values()) == {1}


def test_the_database_refuses_a_fourth_post_or_a_second_mass_send(groups):
    engine = groups
    base = dict(day=DAY, chat_id="wr000", template_digest="d", sender="bot0",
                scheduled_for=EARLY, window_ends_at=EARLY + dt.timedelta(hours=3))
    with Session(engine) as s:
        for slot in (1, 2, 3):
            s.add(SopPost(slot=slot, template_id=f"a{slot}", step_key="1", channel="owner_task", **base))
        s.commit()
    tries = [
        dict(slot=4, template_id="x", step_key="1", channel="owner_task"),  # a 4th slot
        dict(slot=1, template_id="y", step_key="1", channel="owner_task"),  # a slot taken twice
        dict(slot=2, template_id="a1", step_key="1", channel="owner_task", day=DAY),  # the same step twice
    ]
    for extra in tries:
        with Session(engine) as s, pytest.raises(IntegrityError):
            s.add(SopPost(**{**base, **extra}))
            s.commit()
    other = {**base, "chat_id": "wr001"}
    with Session(engine) as s:
        s.add(SopPost(slot=1, mass_seq=1, template_id="m1", step_key="1", channel="mass_send", **other))
        s.commit()
    with Session(engine) as s, pytest.raises(IntegrityError):
        s.add(SopPost(slot=2, mass_seq=1, template_id="m2", step_key="1", channel="mass_send", **other))
        s.commit()

"""The funnel and compliance day rollups (scrm.kpi.funnel_rollups): kept current by a refresh,
idempotent, safe to run twice at once, and exact where a per-day sum would not be (churn).

The corp and its helpers are test_funnel's (S1 with clerk_a and clerk_b, S2 with clerk_c).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from scrm.kpi.funnel import store_funnel
from scrm.kpi.funnel_models import FunnelRollupState, FunnelStaffDay
from scrm.kpi.funnel_rollups import refresh_funnel_rollups
from scrm.kpi.report import KpiFilter
from tests.kpi.test_funnel import TZ, corp, customer_deletes, local, scan  # noqa: F401 - corp: the fixture
from tests.waiting import run_threads

pytestmark = pytest.mark.usefixtures("corp")  # the corp in ``engine``

NOV = dt.date(2026, 11, 1)


def day(d: int) -> dt.date:
    return dt.date(2026, 11, d)


def s1(engine, start: int, end: int, **kw):
    return {r.store_code: r for r in store_funnel(engine, KpiFilter(day(start), day(end)), tz=TZ, **kw)}["S1"]


def test_a_customer_who_deletes_two_clerks_on_two_days_is_one_churned_customer(engine):
    """Churn over a range counts distinct customers from the rollups too. Mutation tried: churn
    rolled up as per-day counts summed over the range (rolled_churned summing per-day distinct
    counts): wm_1 counted 2 over the 23rd–24th; failed."""
    scan(engine, "S1", "clerk_a", "wm_1", local(1, 12))
    scan(engine, "S1", "clerk_b", "wm_1", local(1, 13))
    customer_deletes(engine, "clerk_a", "wm_1", local(23, 10))
    customer_deletes(engine, "clerk_b", "wm_1", local(24, 11))
    refresh_funnel_rollups(engine, tz=TZ, now=local(25, 12))
    assert s1(engine, 23, 24, use_rollups=False).churned == 1
    assert s1(engine, 23, 24).churned == 1  # read from the rollups: the refresh has run
    assert (s1(engine, 23, 23).churned, s1(engine, 24, 24).churned) == (1, 1)


def test_a_refresh_picks_up_new_and_changed_days_and_changes_nothing_when_run_again(engine):
    """Mutations tried: a refresh that starts at the day after the last one rolled up (no
    look-back): wm_back's re-add stayed on the 23rd; a refresh that does not delete before
    re-inserting: the second run hit the primary key. Each failed."""
    scan(engine, "S1", "clerk_a", "wm_1", local(23, 10))
    scan(engine, "S1", "clerk_b", "wm_back", local(23, 11))
    refresh_funnel_rollups(engine, tz=TZ, now=local(24, 8))
    assert (s1(engine, 23, 24).scans, s1(engine, 23, 23).scans) == (2, 2)

    # Later that day: a new scan, and wm_back deletes clerk_b and re-adds: one relation, now dated the 24th.
    scan(engine, "S1", "clerk_a", "wm_2", local(24, 10))
    customer_deletes(engine, "clerk_b", "wm_back", local(24, 11))
    scan(engine, "S1", "clerk_b", "wm_back", local(24, 12))
    assert s1(engine, 24, 24).scans == 0  # as of the last refresh
    refresh_funnel_rollups(engine, tz=TZ, now=local(24, 13))
    raw = s1(engine, 23, 24, use_rollups=False)
    assert (s1(engine, 23, 23).scans, s1(engine, 24, 24).scans) == (1, 2)
    assert s1(engine, 23, 24) == raw

    with engine.connect() as conn:
        before = conn.execute(select(FunnelStaffDay.__table__).order_by(*FunnelStaffDay.__table__.primary_key)).all()
    refresh_funnel_rollups(engine, tz=TZ, now=local(24, 13))
    with engine.connect() as conn:
        after = conn.execute(select(FunnelStaffDay.__table__).order_by(*FunnelStaffDay.__table__.primary_key)).all()
    assert after == before and s1(engine, 23, 24) == raw


def test_two_refreshes_at_once_both_finish_and_leave_the_same_rows(engine):
    """Mutation tried: _lock without its UPDATE of the state row (no row lock on PostgreSQL): the
    two transactions deleted and inserted the same days at once and one hit the primary key;
    failed on PostgreSQL."""
    for n in range(20):
        scan(engine, "S1", "clerk_a", f"wm_{n}", local(23, 10, n))
    refresh_funnel_rollups(engine, tz=TZ, now=local(24, 8))
    run_threads([lambda: refresh_funnel_rollups(engine, tz=TZ, now=local(24, 9))] * 2)
    with engine.connect() as conn:
        rows = conn.execute(select(func.sum(FunnelStaffDay.__table__.c.scans))).scalar_one()
    assert rows == 20 and s1(engine, 23, 24).scans == 20


def test_rollups_cut_in_another_time_zone_are_not_read_and_the_next_refresh_rebuilds(engine):
    """A scan at 07:00 on the 24th in Shanghai is on the 23rd in UTC. Mutation tried: rollups_ready
    ignoring the time zone: the UTC-cut rollups answered the Shanghai query (the scan on the 23rd);
    failed."""
    scan(engine, "S1", "clerk_a", "wm_1", local(24, 7))
    refresh_funnel_rollups(engine, tz="UTC", now=local(25, 12))
    assert (s1(engine, 23, 23).scans, s1(engine, 24, 24).scans) == (0, 1)  # raw: not cut in Shanghai
    refresh_funnel_rollups(engine, tz=TZ, now=local(25, 12))
    with engine.connect() as conn:
        assert conn.execute(select(FunnelRollupState.__table__.c.tz)).scalar_one() == "Asia/Shanghai"
        assert conn.execute(select(func.count()).select_from(FunnelStaffDay.__table__)
                            .where(FunnelStaffDay.__table__.c.day == day(23))).scalar_one() == 0
    assert (s1(engine, 23, 23).scans, s1(engine, 24, 24).scans) == (0, 1)

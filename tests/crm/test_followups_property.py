"""Property tests of the builder's two pieces of arithmetic, against the oracles in
tests/crm/oracle.py: business seconds (minute-by-minute stepping) and the sessionizer (a plain loop).

Mutations tried: ``hi > lo`` -> ``hi >= lo`` made no difference (empty overlaps add 0), so instead
the window list started at ``start``'s local date rather than the day before (failed: an overnight
window opened the evening before was missed); ``isoweekday`` -> ``weekday`` (failed: weekend days
shifted by one); the sessionizer's ``<=`` -> ``<`` (failed at exactly 8 h)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scrm.crm.followups import BusinessHours, Msg, business_exceeds, business_seconds, sessions
from tests.crm.oracle import business_seconds_by_minute, split_sessions

ZONES = ["Asia/Shanghai", "UTC", "Asia/Kolkata", "America/Sao_Paulo", "Europe/Berlin"]
BASE = dt.datetime(2026, 3, 26, 0, 0, tzinfo=dt.UTC)  # Thursday; Berlin moves its clocks on Sunday 29 March


@st.composite
def hours_spec(draw):
    # Whole and half hours, never inside Berlin's 02:00-03:00 spring gap (a wall time that does not exist).
    choices = [m for m in range(0, 24 * 60 + 1, 30) if not 120 <= m < 180]
    a = draw(st.sampled_from([m for m in choices if m < 24 * 60]))
    b = draw(st.sampled_from([m for m in choices if m != a and m > 0]))
    days = draw(st.sets(st.integers(1, 7), min_size=0, max_size=7))
    return a, b, days


@settings(max_examples=150, deadline=None)
@given(zone=st.sampled_from(ZONES), spec=hours_spec(),
       offset=st.integers(0, 6 * 24 * 60), length=st.integers(0, 3 * 24 * 60))
@example(zone="Asia/Shanghai", spec=(9 * 60, 21 * 60, {1, 2, 3, 4, 5}), offset=2 * 24 * 60 - 8 * 60,
         length=3 * 24 * 60)  # Friday 00:00 local to Monday: a weekend in the middle
@example(zone="Asia/Shanghai", spec=(22 * 60, 6 * 60, {7}), offset=3 * 24 * 60 - 8 * 60, length=2 * 24 * 60)
def test_business_seconds_match_minute_stepping(zone, spec, offset, length):
    tz = ZoneInfo(zone)
    a, b, days = spec
    hours = BusinessHours(a, b, frozenset(days), tz)
    start = BASE + dt.timedelta(minutes=offset)
    end = start + dt.timedelta(minutes=length)
    expected = business_seconds_by_minute(start, end, open_minute=a, close_minute=b, days=days, tz=tz)
    assert business_seconds(start, end, hours) == expected
    for limit in {0, 1800, max(0, expected - 1), expected}:
        assert business_exceeds(start, end, hours, limit) == (expected > limit)


def test_business_hours_parse_the_setting():
    tz = ZoneInfo("Asia/Shanghai")
    hours = BusinessHours.parse("09:00-21:00", [1, 2, 3, 4, 5, 6, 7], tz)
    # Monday 20:50 local to Tuesday 09:10 local: 10 minutes that evening, 10 the next morning.
    start = dt.datetime(2026, 11, 30, 20, 50, tzinfo=tz)
    assert business_seconds(start, start + dt.timedelta(hours=12, minutes=20), hours) == 20 * 60
    assert business_seconds(start, start, hours) == 0
    assert business_seconds(start, start - dt.timedelta(hours=1), hours) == 0


def _msgs(offsets_minutes):
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    return [Msg(id=i + 1, channel="chat", direction="in", sent_at=t0 + dt.timedelta(minutes=m))
            for i, m in enumerate(offsets_minutes)]


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(st.just(8 * 60), st.just(8 * 60 + 1), st.just(8 * 60 - 1), st.integers(0, 20 * 60)),
                      max_size=25),
       gap=st.sampled_from([8.0, 0.5, 24.0]))
def test_sessions_match_a_plain_loop(steps, gap):
    offsets, t = [], 0
    for s in steps:
        t += s
        offsets.append(t)
    msgs = _msgs(offsets)
    got = [[m.id - 1 for m in s] for s in sessions(msgs, dt.timedelta(hours=gap))]
    assert got == split_sessions([m.sent_at for m in msgs], gap)


def test_exactly_eight_hours_is_one_session_and_a_minute_more_is_two():
    assert len(sessions(_msgs([0, 8 * 60]), dt.timedelta(hours=8))) == 1
    assert len(sessions(_msgs([0, 8 * 60 + 1]), dt.timedelta(hours=8))) == 2

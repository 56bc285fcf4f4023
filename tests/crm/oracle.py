"""Independent oracles for the follow-up tests, written without looking at how scrm.crm.followups
does it: business time by stepping minute by minute, sessions by one plain loop over gaps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence


def business_seconds_by_minute(start: dt.datetime, end: dt.datetime, *, open_minute: int, close_minute: int,
                               days: set[int], tz: dt.tzinfo) -> int:
    """Count each whole UTC minute in [start, end) whose local wall time is open. A window with
    close <= open runs over midnight and belongs to the weekday it opened on."""
    total = 0
    t = start
    step = dt.timedelta(minutes=1)
    while t < end:
        local = t.astimezone(tz)
        m = local.hour * 60 + local.minute
        if open_minute < close_minute:
            inside = open_minute <= m < close_minute and local.isoweekday() in days
        else:
            if m >= open_minute:
                inside = local.isoweekday() in days
            elif m < close_minute:
                inside = (local.date() - dt.timedelta(days=1)).isoweekday() in days
            else:
                inside = False
        if inside:
            total += 60
        t += step
    return total


def split_sessions(times: Sequence[dt.datetime], gap_hours: float) -> list[list[int]]:
    """Indexes of sorted times grouped: a new group when the step from the previous time is more
    than the gap."""
    groups: list[list[int]] = []
    previous = None
    for i, t in enumerate(times):
        if previous is None or (t - previous).total_seconds() > gap_hours * 3600:
            groups.append([])
        groups[-1].append(i)
        previous = t
    return groups

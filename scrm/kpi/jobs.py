"""What the scheduler runs for the KPIs: one rollup refresh with the configured zone and window,
every ``kpi.rollup_interval_seconds``. Overlapping runs (a slow refresh, a second scheduler, a
``scrm kpi refresh`` by hand) are safe: they take turns on the lock row."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from scrm.config import Settings, get_settings
from scrm.kpi.rollups import RefreshReport, refresh_rollups


def refresh_kpi_rollups(engine: Engine, settings: Settings | None = None) -> RefreshReport:
    settings = settings or get_settings()
    return refresh_rollups(engine, tz=settings.sop.timezone,
                           window=dt.timedelta(hours=settings.kpi.attribution_window_hours))

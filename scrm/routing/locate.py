"""Routing a located customer to a store: the nearest open store within the radius, else the
store serving their city, else the default store, else nobody (the page says so).

``decide`` is pure; ``StoreLocator`` keeps the in-memory spatial index of open stores and
rebuilds it when the stores change (checked at most every ``check_every`` seconds).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Mapping

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from scrm.routing.nearest import NearestStoreIndex, StorePoint
from scrm.stores.models import Store

NEAREST, CITY, DEFAULT, NONE = "nearest", "city", "default", "none"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    store_code: str | None
    reason: str  # nearest | city | default | none
    distance_km: float | None = None


def decide(index: NearestStoreIndex, lat: float | None, lng: float | None, *, city: str | None,
           radius_km: float, city_stores: Mapping[str, str], default_store: str,
           open_codes: set[str]) -> RouteDecision:
    if lat is not None and lng is not None:
        found = index.nearest(lat, lng, radius_km=radius_km)
        if found:
            point, km = found[0]
            return RouteDecision(point.code, NEAREST, km)
    if city and city_stores.get(city) in open_codes:
        return RouteDecision(city_stores[city], CITY)
    if default_store and default_store in open_codes:
        return RouteDecision(default_store, DEFAULT)
    return RouteDecision(None, NONE)


class StoreLocator:
    def __init__(self, engine: Engine, *, check_every: float = 30.0):
        self.engine, self.check_every = engine, check_every
        self._lock = threading.Lock()
        self._version = None
        self._checked = 0.0
        self.index = NearestStoreIndex([])
        self.open_codes: set[str] = set()

    def _current_version(self):
        t = Store.__table__.c
        with self.engine.connect() as conn:
            return tuple(conn.execute(select(
                func.count(), func.max(t.updated_at), func.sum(case((t.status == "open", 1), else_=0)),
                func.sum(t.latitude), func.sum(t.longitude),
            )).one())

    def refresh(self, force: bool = False) -> NearestStoreIndex:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < self.check_every:
                return self.index
            self._checked = now
            version = self._current_version()
            if force or version != self._version:
                with self.engine.connect() as conn:
                    rows = conn.execute(select(Store.__table__).where(Store.__table__.c.status == "open")).all()
                self.open_codes = {r.code for r in rows}
                points = [StorePoint(r.code, r.latitude, r.longitude, r.city or "")
                          for r in rows if r.latitude is not None and r.longitude is not None]
                self.index, _rejected = NearestStoreIndex.build(points)
                self._version = version
            return self.index

    def route(self, lat: float | None, lng: float | None, *, city: str | None, settings) -> RouteDecision:
        index = self.refresh()
        return decide(index, lat, lng, city=city, radius_km=settings.radius_km, city_stores=settings.city_stores,
                      default_store=settings.default_store, open_codes=self.open_codes)

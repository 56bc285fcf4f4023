"""Routing a located customer to a store: the nearest open store within the radius, else the
store serving their city, else the default store, else nobody (the page says so).

The store serving a city is ``routing.city_stores[city]`` when the operator set one (and it is
open), else the city's best open store *with a group*: one whose group live code is active, the
one with the most room left in its groups, ties by code. A customer who picks a city never lands
on a store without a group to join.

``decide`` is pure (the city's candidates come in as data); ``StoreLocator`` keeps the in-memory
spatial index of open stores, rebuilt when the stores change (checked at most every
``check_every`` seconds), and reads the candidates of the one city asked about.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from scrm.groups.models import GroupMember, MemberState
from scrm.routing.nearest import NearestStoreIndex, StorePoint, haversine_km
from scrm.stores.models import CodeStatus, Store, StoreCode, StoreStatus

if TYPE_CHECKING:
    from scrm.config import RoutingSettings

NEAREST, CITY, DEFAULT, NONE = "nearest", "city", "default", "none"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    store_code: str | None
    reason: str  # nearest | city | default | none
    distance_km: float | None = None


@dataclass(frozen=True, slots=True)
class GroupStore:
    """An open store a customer can join a group of: its group live code is active."""

    code: str
    city: str
    latitude: float | None
    longitude: float | None
    room: int  # places left in the groups its live code points at


def rank_city_candidates(stores: Sequence[GroupStore]) -> list[str]:
    """The city's stores with a group, best first: most room left, then by code."""
    return [g.code for g in sorted(stores, key=lambda g: (-g.room, g.code))]


def decide(index: NearestStoreIndex, lat: float | None, lng: float | None, *, city: str | None,
           radius_km: float, city_stores: Mapping[str, str], default_store: str,
           open_codes: set[str], city_candidates: Sequence[str] = ()) -> RouteDecision:
    """``city_candidates``: the city's open stores with a group, best first (used when the
    operator set no store for the city in ``city_stores``)."""
    if lat is not None and lng is not None:
        found = index.nearest(lat, lng, radius_km=radius_km)
        if found:
            point, km = found[0]
            return RouteDecision(point.code, NEAREST, km)
    if city and city_stores.get(city) in open_codes:
        return RouteDecision(city_stores[city], CITY)
    if city:
        best = next((c for c in city_candidates if c in open_codes), None)
        if best:
            return RouteDecision(best, CITY)
    if default_store and default_store in open_codes:
        return RouteDecision(default_store, DEFAULT)
    return RouteDecision(None, NONE)


class StoreLocator:
    def __init__(self, engine: Engine, *, check_every: float = 30.0):
        self.engine, self.check_every = engine, check_every
        self._lock = threading.Lock()
        self._version: tuple[Any, ...] | None = None
        self._checked = 0.0
        self.index = NearestStoreIndex([])
        self.open_codes: set[str] = set()

    def _current_version(self) -> tuple[Any, ...]:
        t = Store.__table__.c
        with self.engine.connect() as conn:
            return tuple(conn.execute(select(
                func.count(), func.max(t.updated_at), func.sum(case((t.status == StoreStatus.open, 1), else_=0)),
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
                    rows = conn.execute(select(Store.__table__)
                                        .where(Store.__table__.c.status == StoreStatus.open)).all()
                self.open_codes = {r.code for r in rows}
                points = [StorePoint(r.code, r.latitude, r.longitude, r.city or "")
                          for r in rows if r.latitude is not None and r.longitude is not None]
                self.index, _rejected = NearestStoreIndex.build(points)
                self._version = version
            return self.index

    def route(self, lat: float | None, lng: float | None, *, city: str | None,
              settings: RoutingSettings) -> RouteDecision:
        index = self.refresh()
        candidates: list[str] = []
        if city and settings.city_stores.get(city) not in self.open_codes:
            candidates = rank_city_candidates(self.group_stores(city=city, cap=settings.group_qr_cap))
        return decide(index, lat, lng, city=city, radius_km=settings.radius_km, city_stores=settings.city_stores,
                      default_store=settings.default_store, open_codes=self.open_codes,
                      city_candidates=candidates)

    def group_stores(self, *, city: str, cap: int = 200) -> list[GroupStore]:
        """The city's open stores whose group live code is active, with the room left."""
        st, sc = Store.__table__.c, StoreCode.__table__.c
        q = (select(st.code, st.city, st.latitude, st.longitude, sc.chat_ids)
             .join(StoreCode.__table__, sc.store_code == st.code)
             .where(st.city == city, st.status == StoreStatus.open, sc.kind == "group", sc.status == CodeStatus.active,
                    sc.qr_code.is_not(None)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            chats = {c for r in rows for c in (r.chat_ids or [])}
            gm = GroupMember.__table__.c
            counts: dict[str, int] = {chat_id: n for chat_id, n in conn.execute(select(gm.chat_id, func.count()).where(
                gm.state == MemberState.member, gm.chat_id.in_(chats)).group_by(gm.chat_id)).all()} if chats else {}
        return [GroupStore(r.code, r.city or "", r.latitude, r.longitude,
                           sum(max(0, cap - counts.get(c, 0)) for c in (r.chat_ids or [])))
                for r in rows]

    def cities(self, settings: RoutingSettings) -> list[str]:
        """The cities a customer can pick: those with an open store that has a group, and those
        the operator routed to an open store."""
        self.refresh()
        st, sc = Store.__table__.c, StoreCode.__table__.c
        with self.engine.connect() as conn:
            found = set(conn.execute(
                select(st.city).distinct().join(StoreCode.__table__, sc.store_code == st.code)
                .where(st.status == StoreStatus.open, st.city != "", sc.kind == "group",
                       sc.status == CodeStatus.active, sc.qr_code.is_not(None))).scalars())
        found |= {c for c, code in settings.city_stores.items() if code in self.open_codes}
        return sorted(found)

    def replacement_for(self, store: Store, *, cap: int = 200) -> str | None:
        """For a closed (or groupless) store: the nearest open store of its city that has a group
        (by room then code when the store has no coordinates), else None."""
        if not store.city:
            return None
        others = [g for g in self.group_stores(city=store.city, cap=cap) if g.code != store.code]
        if not others:
            return None
        if store.latitude is not None and store.longitude is not None:
            here = (store.latitude, store.longitude)
            placed = [(g.code, g.latitude, g.longitude) for g in others
                      if g.latitude is not None and g.longitude is not None]
            if placed:
                return min(placed, key=lambda g: (haversine_km(*here, g[1], g[2]), g[0]))[0]
        return rank_city_candidates(others)[0]

"""Store pages: the staff's printable QR page, the customer's group page, the location landing
page and its routing API. Server-rendered (Jinja2, autoescaped), no external assets."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session, select

from scrm.contacts.models import Employee
from scrm.routing.locate import StoreLocator
from scrm.stores.models import Store, StoreCode

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def store_pages(engine, routing_settings) -> APIRouter:
    router = APIRouter()
    locator = StoreLocator(engine)

    def store_or_404(s: Session, store_code: str) -> Store:
        store = s.get(Store, store_code)
        if store is None:
            raise HTTPException(404, f"no store {store_code!r}")
        return store

    def codes(s: Session, store_code: str) -> tuple[StoreCode | None, list[StoreCode]]:
        rows = s.exec(select(StoreCode).where(StoreCode.store_code == store_code, StoreCode.status != "removed")).all()
        group = next((c for c in rows if c.kind == "group"), None)
        return group, sorted((c for c in rows if c.kind == "staff"), key=lambda c: c.userid)

    @router.get("/s/{store_code}", response_class=HTMLResponse)
    def staff_page(request: Request, store_code: str):
        with Session(engine) as s:
            store = store_or_404(s, store_code)
            group, staff = codes(s, store_code)
            names = {e.userid: e.name for e in s.exec(select(Employee).where(
                Employee.userid.in_([c.userid for c in staff])))} if staff else {}
            return templates.TemplateResponse(request, "store.html", {
                "store": store, "group_code": group, "staff_codes": staff, "names": names})

    @router.get("/g/{store_code}", response_class=HTMLResponse)
    def group_page(request: Request, store_code: str):
        with Session(engine) as s:
            store = store_or_404(s, store_code)
            group, _ = codes(s, store_code)
            return templates.TemplateResponse(request, "group.html", {"store": store, "group_code": group})

    @router.get("/l", response_class=HTMLResponse)
    def locate_page(request: Request, city: str = Query("")):
        with Session(engine) as s:
            cities = sorted({c for c in s.exec(select(Store.city).where(Store.status == "open")) if c})
        return templates.TemplateResponse(request, "locate.html", {"cities": cities, "city": city})

    @router.get("/api/route")
    def route(lat: float | None = Query(None, ge=-90, le=90), lng: float | None = Query(None, ge=-180, le=180),
              city: str = Query("", max_length=64)):
        """Which store's group a customer here should join (nearest open store within the radius,
        else the city's store, else the default store)."""
        if (lat is None) != (lng is None):
            raise HTTPException(422, "give both lat and lng, or neither")
        decision = locator.route(lat, lng, city=city or None, settings=routing_settings)
        body: dict = {"reason": decision.reason, "distance_km": decision.distance_km, "store": None}
        if decision.store_code:
            with Session(engine) as s:
                store = s.get(Store, decision.store_code)
                group, _ = codes(s, decision.store_code)
            body.update(
                store={"code": store.code, "name": store.name, "address": store.address, "city": store.city},
                group_page=f"/g/{store.code}", qr_code=group.qr_code if group else None,
            )
        return JSONResponse(body)

    return router

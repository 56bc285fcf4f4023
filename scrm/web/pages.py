"""Store pages: the index, the staff's printable QR page and its one-code posters, the customer's
group page, the location landing page and its routing API, and the Chinese "not found" page.
Server-rendered (Jinja2, autoescaped), inline CSS, no external assets.

Store codes in URLs ignore case (``/s/slt`` is store ``SLT``). A closed or unknown store's group
page is a 404 in Chinese that offers the landing page and, when one can be guessed, the nearest
open store of the same city that has a group.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import StarletteHTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlmodel import Session

from scrm.routing.locate import StoreLocator
from scrm.stores.models import Store, StoreCode, StoreStatus
from scrm.web.lookups import employee_names, find_store, group_owner_names, open_stores, store_codes
from scrm.web.operator import REALM, OperatorAccess
from scrm.web.templating import templates

STORES_PER_PAGE = 20


class PageNotFound(HTTPException):
    """A 404 that customers see as a Chinese page (see :func:`not_found_page`)."""

    def __init__(self, *, heading: str = "", suggestion: Store | None = None):
        super().__init__(404, "not found")
        self.heading, self.suggestion = heading, suggestion


def not_found_page(request: Request, exc: StarletteHTTPException | None = None) -> Response:
    """The friendly 404: what happened, the way on (the landing page, a guessed store's group).
    Whatever the visitor typed is never shown."""
    heading = getattr(exc, "heading", "") or "这个页面找不到了"
    return templates.TemplateResponse(request, "notice.html", {
        "title": "页面找不到了", "heading": heading,
        "lines": ["可能是海报上的门店已经调整，或者链接已经过期。"],
        "suggestion": getattr(exc, "suggestion", None), "show_locate": True,
    }, status_code=404)


def store_pages(engine, routing_settings, *, tz: dt.tzinfo | None = None,
                access: OperatorAccess | None = None) -> APIRouter:
    """``tz``: the corp's time zone for the times shown (default Asia/Shanghai); ``access``: who
    sees operator details and links (default: everybody, as in the sandbox)."""
    router = APIRouter()
    locator = StoreLocator(engine)
    tz = tz or ZoneInfo("Asia/Shanghai")
    access = access or OperatorAccess(public=True)
    cap = routing_settings.group_qr_cap

    def is_operator(request: Request) -> bool:
        return access.allows(request.headers.get("authorization"))

    def store_or_404(s: Session, store_code: str) -> Store:
        store = find_store(s, store_code)
        if store is None:
            raise PageNotFound()
        return store

    def suggestion(s: Session, store: Store) -> Store | None:
        code = locator.replacement_for(store, cap=cap)
        return s.get(Store, code) if code else None

    @router.get("/", response_class=HTMLResponse)
    def index(request: Request, page: int = Query(1, ge=1, le=100_000)):
        with Session(engine) as s:
            stores, total = open_stores(s, offset=(page - 1) * STORES_PER_PAGE, limit=STORES_PER_PAGE)
        pages = max(1, math.ceil(total / STORES_PER_PAGE))
        toolbar = any(getattr(r, "path", None) == "/toolbar" for r in request.app.routes)
        return templates.TemplateResponse(request, "index.html", {
            "stores": stores, "total": total, "page": page, "pages": pages, "toolbar": toolbar,
            "operator": is_operator(request)})

    @router.get("/s/{store_code}", response_class=HTMLResponse)
    def staff_page(request: Request, store_code: str, detail: bool = Query(False)):
        operator = is_operator(request)
        if detail and not operator and access.has_token:  # "show me the details": ask for the token
            return Response("需要运营口令", status_code=401, headers={"WWW-Authenticate": REALM},
                            media_type="text/plain; charset=utf-8")
        with Session(engine) as s:
            store = store_or_404(s, store_code)
            group, staff = store_codes(s, store.code)
            names = employee_names(s, [c.userid for c in staff])
            staff.sort(key=lambda c: (not c.qr_code, names.get(c.userid, ""), c.userid))  # printable ones first
            return templates.TemplateResponse(request, "store.html", {
                "store": store, "group_code": group, "staff_codes": staff, "names": names,
                "owners": group_owner_names(s, group.chat_ids if group else []),
                "tz": tz, "operator": operator, "can_ask_detail": access.has_token})

    @router.get("/s/{store_code}/poster", response_class=HTMLResponse)
    def poster(request: Request, store_code: str, code: str = Query("group", max_length=8),
               staff: str = Query("", max_length=64)):
        """One QR code filling an A4 page: the store's group code, or ``?staff=<userid>``'s."""
        with Session(engine) as s:
            store = store_or_404(s, store_code)
            group, staff_codes = store_codes(s, store.code)
            if staff:
                qr = next((c for c in staff_codes if c.userid == staff), None)
                name = employee_names(s, [staff]).get(staff, "")
            elif code == "group":
                qr, name = group, ""
            else:
                qr = None
            if qr is None or not qr.qr_code:
                raise PageNotFound(heading="这张二维码还没有生成")
            return templates.TemplateResponse(request, "poster.html", {
                "store": store, "qr": qr, "staff_name": name, "kind": "staff" if staff else "group"})

    @router.get("/g/{store_code}", response_class=HTMLResponse)
    def group_page(request: Request, store_code: str):
        with Session(engine) as s:
            store = store_or_404(s, store_code)
            if store.status != StoreStatus.open:
                raise PageNotFound(heading="这家门店已经停止营业", suggestion=suggestion(s, store))
            group, _ = store_codes(s, store.code)
            ready = bool(group and group.qr_code)
            return templates.TemplateResponse(request, "group.html", {
                "store": store, "group_code": group if ready else None,
                "suggestion": None if ready else suggestion(s, store)})

    @router.get("/l", response_class=HTMLResponse)
    def locate_page(request: Request, city: str = Query("", max_length=64)):
        cities = locator.cities(routing_settings)
        return templates.TemplateResponse(request, "locate.html", {
            "cities": cities, "city": city if city in cities else ""})

    @router.get("/api/route")
    def route(lat: float | None = Query(None, ge=-90, le=90), lng: float | None = Query(None, ge=-180, le=180),
              city: str = Query("", max_length=64)):
        """Which store's group a customer here should join (nearest open store within the radius,
        else the city's store with a group, else the default store)."""
        if (lat is None) != (lng is None):
            raise HTTPException(422, "give both lat and lng, or neither")
        decision = locator.route(lat, lng, city=city or None, settings=routing_settings)
        body: dict[str, Any] = {"reason": decision.reason, "distance_km": decision.distance_km, "store": None}
        store: Store | None = None
        group: StoreCode | None = None
        if decision.store_code:
            with Session(engine) as s:
                store = s.get(Store, decision.store_code)
                group, _ = store_codes(s, decision.store_code)
        if store is not None:  # None also for a store deleted since the index was built
            body.update(
                store={"code": store.code, "name": store.name, "address": store.address, "city": store.city},
                group_page=f"/g/{store.code}", qr_code=group.qr_code if group else None,
            )
        return JSONResponse(body)

    return router

"""A small corp for KPI tests: stores, groups with members, SOP posts with tracked links, customers,
clicks as the write-behind stores them, and orders and refunds through the orders service (the
path the API takes), then the rollups and queries as the dashboard calls them."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from scrm.contacts.models import Customer, FollowRelation
from scrm.groups.models import CustomerGroup, GroupMember
from scrm.kpi import queries
from scrm.kpi.report import Dimension, KpiFilter, KpiPage, KpiRow
from scrm.kpi.rollups import RefreshReport, refresh_rollups
from scrm.orders import service
from scrm.orders.schema import OrderIn, RefundIn
from scrm.sop.models import LinkClick, PostStatus, SopPost, TrackedLink
from scrm.stores.models import Store

TZ = ZoneInfo("Asia/Shanghai")
WINDOW = dt.timedelta(hours=24)


def at(text: str) -> dt.datetime:
    """A corp-local time: ``at("2026-12-01 08:00")``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=TZ)


class World:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._ids = itertools.count(1)
        self._slots: dict[tuple[str, dt.date], int] = {}

    def store(self, code: str, name: str | None = None) -> str:
        with self.engine.begin() as conn:
            conn.execute(insert(Store.__table__).values(code=code, name=name or f"门店{code}", status="open"))
        return code

    def group(self, chat_id: str, store: str | None, *, name: str | None = None, members: list[str] = (),
              joined: dt.datetime | None = None) -> str:
        with self.engine.begin() as conn:
            conn.execute(insert(CustomerGroup.__table__).values(chat_id=chat_id, name=name or f"群{chat_id}",
                                                                store_code=store, status="active", tags=[]))
            for m in members:
                conn.execute(insert(GroupMember.__table__).values(chat_id=chat_id, member_id=m, member_type=2,
                                                                  state="member", joined_at=joined))
        return chat_id

    def customer(self, ext: str, *, state: str | None = None, added: dt.datetime | None = None) -> str:
        with self.engine.begin() as conn:
            conn.execute(insert(Customer.__table__).values(external_userid=ext, name=ext, mobiles=[],
                                                           status="active"))
            if state is not None:
                conn.execute(insert(FollowRelation.__table__).values(
                    userid="staff1", external_userid=ext, state=state, tag_ids=[], remark_mobiles=[],
                    status="active", added_at=added))
        return ext

    def post(self, chat_id: str, template_id: str, sent_at: dt.datetime, *,
             status: PostStatus = PostStatus.sent, code: str | None = None) -> tuple[int, str]:
        """A post of ``template_id`` sent to ``chat_id`` with one tracked link; (post id, link code)."""
        day = sent_at.astimezone(TZ).date()
        slot = self._slots[(chat_id, day)] = self._slots.get((chat_id, day), 0) + 1
        code = code or f"L{next(self._ids)}{template_id[:4]}"
        with self.engine.begin() as conn:
            post_id = conn.execute(insert(SopPost.__table__).values(
                day=day, chat_id=chat_id, slot=slot, template_id=template_id, step_key=f"s{slot}",
                template_digest="d", channel="owner_task", sender="owner", scheduled_for=sent_at,
                window_ends_at=sent_at + dt.timedelta(hours=4), status=str(status),
                sent_at=sent_at if status in (PostStatus.sent, PostStatus.confirmed) else None,
            ).returning(SopPost.__table__.c.id)).scalar_one()
            conn.execute(insert(TrackedLink.__table__).values(code=code, post_id=post_id, position=0,
                                                              chat_id=chat_id, template_id=template_id, day=day,
                                                              url="https://shop.example/x"))
        return post_id, code

    def set_status(self, post_id: int, status: PostStatus) -> None:
        t = SopPost.__table__
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == post_id).values(status=str(status)))

    def click(self, code: str, when: dt.datetime, ext: str | None = None, *, counted: bool = True,
              agent: str = "person") -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(LinkClick.__table__).values(
                event_id=f"e{next(self._ids)}", code=code, clicked_at=when, visitor=f"v:{ext or 'anon'}",
                agent=agent, reason="counted" if counted else ("repeat" if agent == "person" else "not_a_person"),
                counted=counted, external_userid=ext).returning(LinkClick.__table__.c.id)).scalar_one()

    def order(self, order_id: str, ext: str | None, paid: dt.datetime, amount_fen: int, **kw: Any
              ) -> service.OrderOutcome:
        body: dict[str, Any] = {"order_id": order_id, "paid_at": paid.isoformat(), "amount_fen": amount_fen}
        if ext:
            body["external_userid"] = ext
        else:
            body["mobile"] = "13700137000"
        body.update(kw)
        return service.record_order(self.engine, OrderIn.model_validate(body))

    def refund(self, refund_id: str, order_id: str, amount_fen: int, when: dt.datetime) -> None:
        service.record_refund(self.engine, RefundIn(refund_id=refund_id, order_id=order_id, amount_fen=amount_fen,
                                                    refunded_at=when))

    def refresh(self, **kw: Any) -> RefreshReport:
        return refresh_rollups(self.engine, tz=TZ, window=kw.pop("window", WINDOW), **kw)

    def table(self, by: Dimension, start: str = "2026-11-01", end: str = "2026-12-31", **kw: Any) -> KpiPage:
        limit, offset = kw.pop("limit", 500), kw.pop("offset", 0)
        return queries.kpi_table(self.engine, KpiFilter(dt.date.fromisoformat(start), dt.date.fromisoformat(end),
                                                        **kw), by, limit=limit, offset=offset, tz=TZ)

    def row(self, by: Dimension, key: str, **kw: Any) -> KpiRow | None:
        return next((r for r in self.table(by, **kw).rows if r.key == key), None)

    def attribution(self, order_id: str):
        return queries.order_attribution(self.engine, order_id)

    def rollup_rows(self) -> list[Any]:
        from scrm.kpi.models import KpiDaily

        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(KpiDaily.__table__).order_by(KpiDaily.__table__.c.id))]

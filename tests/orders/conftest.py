"""Orders fixtures: customers to match against, and order/refund payloads."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from scrm.contacts.models import Customer, FollowRelation


def add_customer(engine, external_userid: str, *, unionid: str | None = None, mobiles: list[str] = (),
                 remark_mobiles: list[str] = ()) -> None:
    with Session(engine) as s:
        s.add(Customer(external_userid=external_userid, unionid=unionid, mobiles=list(mobiles)))
        if remark_mobiles:
            s.add(FollowRelation(userid="zhangsan", external_userid=external_userid,
                                 remark_mobiles=list(remark_mobiles)))
        s.commit()


def order_payload(order_id: str = "SO-1", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"order_id": order_id, "paid_at": "2026-11-30T10:15:00+08:00", "amount_fen": 12900,
                            "items": [{"sku": "milk-1l", "qty": 2, "price_fen": 6450}], "store_code": "SH001"}
    body.update(kw)
    if not any(k in body for k in ("external_userid", "unionid", "mobile")):
        body["mobile"] = "138 0013 8000"
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture
def customers(engine):
    """wm_a (unionid u_a, remark mobile 13800138000), wm_b (unionid u_b), wm_c (mobile 13900139000)."""
    add_customer(engine, "wm_a", unionid="u_a", remark_mobiles=["+86 138-0013-8000"])
    add_customer(engine, "wm_b", unionid="u_b")
    add_customer(engine, "wm_c", mobiles=["13900139000"])
    return engine

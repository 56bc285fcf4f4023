"""The customers factor of the GMV decomposition over a seeded random chain, on SQLite and
PostgreSQL: members joining and leaving at random times, members who were never customers
(employees), a member whose leave time is missing, and customers added by the stores' QR codes —
for a period and the one before it, per store and per group, against sets built in Python from the
raw rows (the oracle shares no code with the query)."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from sqlalchemy import insert

from scrm.contacts.models import Customer, FollowRelation
from scrm.groups.models import CustomerGroup, GroupMember
from scrm.kpi import queries
from scrm.kpi.report import Dimension, KpiFilter
from scrm.stores.models import Store, StoreCode
from tests.kpi.world import TZ, at

STORES = ("SH001", "BJ001", "GZ001")


def chain(engine, seed: int):
    """Random stores, groups, members and QR-code customers; returns the raw facts for the oracle."""
    rng = random.Random(seed)
    start = at("2026-11-10 00:00")

    def moment():
        return None if rng.random() < 0.1 else start + dt.timedelta(hours=rng.randrange(30 * 24))

    members, follows = [], []
    with engine.begin() as conn:
        for code in STORES:
            conn.execute(insert(Store.__table__).values(code=code, name=code, status="open"))
            conn.execute(insert(StoreCode.__table__).values(store_code=code, kind="staff", userid="u1",
                                                            state=f"st:{code}:1", chat_ids=[]))
        for i in range(6):
            chat, store = f"g{i}", STORES[i % 3] if i < 5 else None
            conn.execute(insert(CustomerGroup.__table__).values(chat_id=chat, name=chat, store_code=store,
                                                                status="active", tags=[]))
            for ext in rng.sample([f"wm_{k}" for k in range(25)], 8):
                joined, kind = moment(), 1 if rng.random() < 0.1 else 2
                state = rng.choice(["member", "left"])
                left = (moment() if rng.random() < 0.9 else None) if state == "left" else None
                if joined and left and left < joined:
                    joined, left = left, joined
                conn.execute(insert(GroupMember.__table__).values(chat_id=chat, member_id=ext, member_type=kind,
                                                                  state=state, joined_at=joined, left_at=left))
                members.append((chat, store, ext, kind, state, joined, left))
        for k in range(25):
            ext = f"wm_{k}"
            conn.execute(insert(Customer.__table__).values(external_userid=ext, name=ext, mobiles=[],
                                                           status="active"))
            if rng.random() < 0.6:
                code, added = rng.choice(STORES), moment()
                conn.execute(insert(FollowRelation.__table__).values(
                    userid="u1", external_userid=ext, state=f"st:{code}:1", tag_ids=[], remark_mobiles=[],
                    status="active", added_at=added))
                follows.append((code, ext, added))
    return members, follows


def expected(members, follows, f: KpiFilter, by: Dimension) -> dict[str, int]:
    lo = dt.datetime.combine(f.start, dt.time(), TZ)
    hi = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time(), TZ)
    seen: dict[str, set[str]] = {}
    for chat, store, ext, kind, state, joined, left in members:
        present = kind == 2 and (joined is None or joined < hi) and (
            state == "member" or (left is not None and left >= lo))
        key = chat if by is Dimension.group else store
        if present and key is not None:
            seen.setdefault(key, set()).add(ext)
    if by is Dimension.store:
        for code, ext, added in follows:
            if added is None or added < hi:
                seen.setdefault(code, set()).add(ext)
    return {k: len(v) for k, v in seen.items()}


@pytest.mark.parametrize("seed", [1, 2])
def test_customers_of_a_period_and_the_one_before_match_the_raw_rows(engine, seed):
    """Tried: one flag for both periods (the previous period showed the current customers) and
    counting a store's customers per group without the distinct (customers in two groups of a store
    counted twice)."""
    members, follows = chain(engine, seed)
    for f in (KpiFilter(dt.date(2026, 11, 25), dt.date(2026, 12, 1)), KpiFilter(dt.date(2026, 11, 15),
                                                                                dt.date(2026, 12, 14))):
        for by in (Dimension.store, Dimension.group):
            rows = {d.key: d for d in queries.gmv_decomposition(engine, f, by, tz=TZ)}
            now = {k: d.current.customers for k, d in rows.items() if d.current.customers}
            before = {k: d.previous.customers for k, d in rows.items() if d.previous.customers}
            assert now == expected(members, follows, f, by), (f, by)
            assert before == expected(members, follows, f.previous(), by), (f, by)

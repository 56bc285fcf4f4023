"""The store funnel (scrm.kpi.funnel.store_funnel) on SQLite and PostgreSQL.

The corp: stores S1 南京西路店 (clerks clerk_a, clerk_b), S2 国贸店 (clerk_c) and S3 静安店 (no
staff, nothing happens there). Staff codes come from ``ensure_staff_codes`` (a stand-in WeCom
answers add_contact_way), contacts from ``apply_contact_detail`` as the callback worker writes
them, groups from ``apply_group_chat`` and ``assign_groups``, deletions from ``mark_removed`` and
``raise_churn_alert`` as the del_follow_user callback does. The range is Mon 23 – Tue 24 Nov 2026
in Asia/Shanghai.
"""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update
from sqlmodel import Session

from scrm.contacts import service as contacts
from scrm.contacts.models import Customer, FollowStatus
from scrm.groups import service as groups
from scrm.kpi.funnel import store_funnel
from scrm.kpi.report import KpiFilter, StaffCodeFunnel, StoreFunnel
from scrm.stores.csvio import StoreRow, import_stores
from scrm.stores.groups import assign_groups
from scrm.stores.models import StoreCode, StoreStatus
from scrm.stores.service import ensure_staff_codes

TZ = ZoneInfo("Asia/Shanghai")
START, END = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
RANGE = KpiFilter(START, END)
_inbox = itertools.count(1)


def local(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=TZ).astimezone(dt.UTC)


class ContactWays:
    """WeCom's add_contact_way, as far as ensure_staff_codes needs it."""

    def __init__(self):
        self.n = 0

    def add_contact_way(self, **payload):
        self.n += 1
        return {"config_id": f"cfg{self.n}", "qr_code": f"https://wework.example/qr/{self.n}"}

    def del_contact_way(self, config_id):
        pass


_store_funnel = store_funnel


@pytest.fixture(autouse=True, params=["raw", "rollups"])
def path(request, monkeypatch):
    """Every test runs twice: straight from the raw tables, and from the day rollups rebuilt just
    before the query (scrm.kpi.funnel_rollups): the two must agree. Mutation tried on the rollup
    path: the day rows written with new_customers = scans: test_a_returning_customer failed on
    both backends (churn over a range: see test_funnel_rollups)."""
    from scrm.kpi.funnel_rollups import rebuild_funnel_rollups

    def query(engine, f, *, tz, **kw):
        if request.param == "raw":
            return _store_funnel(engine, f, tz=tz, use_rollups=False, **kw)
        rebuild_funnel_rollups(engine, tz=tz)
        return _store_funnel(engine, f, tz=tz, use_rollups=True, **kw)

    monkeypatch.setitem(globals(), "store_funnel", query)
    return request.param


@pytest.fixture
def corp(engine):
    with Session(engine) as s:
        for userid, name in [("clerk_a", "王店员"), ("clerk_b", "李店员"), ("clerk_c", "赵店员"), ("owner", "张店长")]:
            contacts.upsert_employee(s, userid, name)
        s.commit()
    import_stores(engine, [StoreRow(code="S1", name="南京西路店", staff=["clerk_a", "clerk_b"]),
                           StoreRow(code="S2", name="国贸店", staff=["clerk_c"]),
                           StoreRow(code="S3", name="静安店")])
    report = ensure_staff_codes(lambda: Session(engine, expire_on_commit=False), ContactWays())
    assert report.created == 3 and not report.failed
    return engine


def state_of(engine, store: str, userid: str) -> str:
    sc = StoreCode.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(sc.state).where(sc.store_code == store, sc.userid == userid)).scalar_one()


def add_contact(engine, userid: str, eid: str, at: dt.datetime, *, state: str | None) -> None:
    """An add_external_contact callback applied: externalcontact/get's answer for the customer."""
    follow = {"userid": userid, "createtime": int(at.timestamp()), "remark": "", "state": state or ""}
    with Session(engine) as s:
        contacts.apply_contact_detail(s, {"external_contact": {"external_userid": eid, "name": eid, "type": 1},
                                          "follow_user": [follow]}, as_of=at)
        s.commit()


def scan(engine, store: str, userid: str, eid: str, at: dt.datetime) -> None:
    add_contact(engine, userid, eid, at, state=state_of(engine, store, userid))


def customer_deletes(engine, userid: str, eid: str, at: dt.datetime) -> None:
    """A del_follow_user callback applied, as scrm.callbacks.dispatch does it."""
    with Session(engine) as s:
        contacts.mark_removed(s, userid, eid, status=FollowStatus.deleted_by_customer, at=at)
        contacts.raise_churn_alert(s, inbox_id=next(_inbox), kind="customer_deleted_employee", userid=userid,
                                   external_userid=eid, at=at)
        s.commit()


def group_chat(engine, chat_id: str, members: dict[str, dt.datetime], *, owner: str = "owner",
               employees: tuple[str, ...] = ("owner",), employees_joined: dt.datetime | None = None,
               left_at: dt.datetime | None = None, monkeypatch=None) -> None:
    """A groupchat/get answer applied: ``members`` customers with their join times, plus employees
    (joined on 1 Nov unless ``employees_joined``). ``left_at``: when scrm applies it (members no
    longer listed are marked left then)."""
    since = employees_joined or local(1, 9)
    member_list = [{"userid": u, "type": 1, "join_time": int(since.timestamp()), "join_scene": 1}
                   for u in employees]
    member_list += [{"userid": eid, "type": 2, "join_time": int(at.timestamp()), "join_scene": 3}
                    for eid, at in members.items()]
    if left_at is not None:
        monkeypatch.setattr(groups, "utcnow", lambda: left_at)
    with Session(engine) as s:
        groups.apply_group_chat(s, {"chat_id": chat_id, "name": chat_id, "owner": owner, "member_list": member_list})
        s.commit()


def funnel(engine, f: KpiFilter = RANGE, **kw) -> dict[str, StoreFunnel]:
    rows = store_funnel(engine, f, tz=TZ, **kw)
    assert [r.store_code for r in rows] == sorted(r.store_code for r in rows)
    return {r.store_code: r for r in rows}


def staff(row: StoreFunnel) -> dict[str, tuple[str, int, int]]:
    return {p.userid: (p.name, p.scans, p.new_customers) for p in row.staff}


def test_a_scan_through_a_staff_code_counts_for_that_store_and_that_staff_member(corp):
    """Mutation tried: joining relations to codes by ``userid`` instead of ``state``: the contact
    clerk_a added without a code (and the one from another tool's code) became scans; failed."""
    scan(corp, "S1", "clerk_a", "wm_1", local(23, 10))
    scan(corp, "S2", "clerk_c", "wm_2", local(24, 15))
    add_contact(corp, "clerk_a", "wm_search", local(23, 11), state=None)  # added by searching the mobile
    add_contact(corp, "clerk_a", "wm_other", local(23, 12), state="ad_campaign_7")  # another tool's code

    rows = funnel(corp)
    assert list(rows) == ["S1", "S2", "S3"]  # the silent store is listed too
    s1, s2, s3 = rows["S1"], rows["S2"], rows["S3"]
    assert (s1.store_name, s1.scans, s1.new_customers) == ("南京西路店", 1, 1)
    assert staff(s1) == {"clerk_a": ("王店员", 1, 1), "clerk_b": ("李店员", 0, 0)}
    assert s1.staff[0] == StaffCodeFunnel("clerk_a", "王店员", 1, 1)  # the busiest first
    assert (s2.scans, s2.new_customers, staff(s2)) == (1, 1, {"clerk_c": ("赵店员", 1, 1)})
    assert s3 == StoreFunnel("S3", "静安店", 0, 0, [], 0, 0, 0, 0, 0, 0)


def test_a_returning_customer_is_a_scan_but_not_new(corp):
    """Mutations tried: without the earlier-relation test, wm_known and wm_twice's second scan
    counted new; without the customer-record test, wm_back counted new. Each failed."""
    # wm_known has followed S2's clerk since 1 Nov, and now scans S1's code.
    scan(corp, "S2", "clerk_c", "wm_known", local(1, 12))
    scan(corp, "S1", "clerk_a", "wm_known", local(23, 9))
    # wm_back scanned clerk_b on 1 Nov, deleted them, and scans again on the 24th: the same relation
    # comes back. scrm has known wm_back since 1 Nov: its record was written then (backdated here,
    # as the test's clock is not the story's).
    scan(corp, "S1", "clerk_b", "wm_back", local(1, 12))
    customer_deletes(corp, "clerk_b", "wm_back", local(10, 12))
    with corp.begin() as conn:
        conn.execute(update(Customer.__table__).where(Customer.__table__.c.external_userid == "wm_back")
                     .values(created_at=local(1, 12, 1)))
    scan(corp, "S1", "clerk_b", "wm_back", local(24, 9))
    # wm_twice is new: it scans clerk_a's code, then clerk_b's an hour later (new once).
    scan(corp, "S1", "clerk_a", "wm_twice", local(23, 10))
    scan(corp, "S1", "clerk_b", "wm_twice", local(23, 11))

    s1 = funnel(corp)["S1"]
    assert staff(s1) == {"clerk_a": ("王店员", 2, 1), "clerk_b": ("李店员", 2, 0)}
    assert (s1.scans, s1.new_customers) == (4, 1)
    assert funnel(corp)["S2"].scans == 0  # its scan was on 1 Nov, before the range
    nov = funnel(corp, KpiFilter(dt.date(2026, 11, 1), dt.date(2026, 11, 1)))
    assert (nov["S2"].scans, nov["S2"].new_customers) == (1, 1)
    # One relation per customer and staff member: wm_back's re-add dates it on the 24th now.
    assert nov["S1"].scans == 0


def test_group_joins_and_leaves_in_the_range_count_out_of_it_do_not(corp, monkeypatch):
    """Mutations tried: joins without the customers-only condition (the owner and clerk, who joined
    on the 23rd, counted); leaves without the range on ``left_at`` (the leave of the 21st counted). Each
    failed."""
    before, inside, after = local(21, 12), local(23, 12), local(26, 12)
    staff_ = {"employees": ("owner", "clerk_a"), "employees_joined": inside}
    group_chat(corp, "wr1", {"wm_old": before, "wm_gone_early": before, "wm_gone": before, "wm_in": inside}, **staff_)
    assign_groups(corp, "S1", ["wr1"])
    group_chat(corp, "wr1", {"wm_old": before, "wm_gone": before, "wm_in": inside}, **staff_,
               left_at=local(21, 13), monkeypatch=monkeypatch)  # wm_gone_early leaves on the 21st
    group_chat(corp, "wr1", {"wm_old": before, "wm_in": inside}, **staff_,
               left_at=local(24, 8), monkeypatch=monkeypatch)  # wm_gone leaves on the 24th
    group_chat(corp, "wr1", {"wm_old": before, "wm_in": inside, "wm_late": after}, **staff_,
               left_at=after, monkeypatch=monkeypatch)
    group_chat(corp, "wr2", {"wm_s2": inside})  # another store's group
    assign_groups(corp, "S2", ["wr2"])

    rows = funnel(corp)
    s1 = rows["S1"]
    assert (s1.group_joins, s1.group_leaves) == (1, 1)
    assert (s1.groups, s1.members) == (1, 5)  # owner, clerk_a, wm_old, wm_in, wm_late: now
    assert (rows["S2"].group_joins, rows["S2"].group_leaves, rows["S2"].members) == (1, 0, 2)
    earlier = funnel(corp, KpiFilter(dt.date(2026, 11, 21), dt.date(2026, 11, 21)))["S1"]
    assert (earlier.group_joins, earlier.group_leaves) == (3, 1)  # wm_old, wm_gone_early, wm_gone joined


def test_a_group_at_the_cap_is_counted_at_cap(corp):
    """Mutation tried: ``n > cap`` instead of ``n >= cap``: the group of exactly 200 was not at
    cap; failed. A dismissed group, however full, is not one of the store's groups now."""
    joined = local(20, 9)
    group_chat(corp, "wr_full", {f"wm_f{i}": joined for i in range(199)})  # + the owner: 200
    group_chat(corp, "wr_room", {f"wm_r{i}": joined for i in range(198)})  # 199
    group_chat(corp, "wr_dead", {f"wm_d{i}": joined for i in range(230)})
    assign_groups(corp, "S1", ["wr_full", "wr_room", "wr_dead"])
    with Session(corp) as s:
        groups.mark_dismissed(s, "wr_dead")
        s.commit()

    s1 = funnel(corp)["S1"]
    assert (s1.groups, s1.members, s1.groups_at_cap, s1.cap) == (2, 399, 1, 200)
    assert funnel(corp, cap=199)["S1"].groups_at_cap == 2


def test_a_deletion_counts_as_churn_on_its_day_only(corp):
    """Mutations tried: counting alerts (not distinct customers): wm_1, who deleted both clerks,
    counted twice; without the range on ``occurred_at``: the 23rd and 25th showed the churn.
    Each failed."""
    scan(corp, "S1", "clerk_a", "wm_1", local(1, 12))
    scan(corp, "S1", "clerk_b", "wm_1", local(1, 13))
    scan(corp, "S1", "clerk_a", "wm_2", local(1, 14))
    scan(corp, "S2", "clerk_c", "wm_3", local(1, 15))
    customer_deletes(corp, "clerk_a", "wm_1", local(24, 10))
    customer_deletes(corp, "clerk_b", "wm_1", local(24, 11))
    customer_deletes(corp, "clerk_c", "wm_3", local(24, 12))
    with Session(corp) as s:  # the clerk deleted wm_2: not the customer leaving
        contacts.mark_removed(s, "clerk_a", "wm_2", status=FollowStatus.deleted_by_employee, at=local(24, 13))
        s.commit()

    def churned(day: int) -> dict[str, int]:
        d = dt.date(2026, 11, day)
        return {code: r.churned for code, r in funnel(corp, KpiFilter(d, d)).items()}

    assert churned(24) == {"S1": 1, "S2": 1, "S3": 0}
    assert churned(23) == churned(25) == {"S1": 0, "S2": 0, "S3": 0}
    assert funnel(corp)["S1"].churned == 1


def test_a_clerk_scoped_to_s1_never_sees_s2(corp):
    """Mutation tried: the store list without the ``f.stores`` condition: S2 and S3 were listed
    for the clerk; failed. (And an empty scope sees nothing rather than everything.)"""
    scan(corp, "S1", "clerk_a", "wm_1", local(23, 10))
    scan(corp, "S2", "clerk_c", "wm_2", local(23, 10))
    scan(corp, "S2", "clerk_c", "wm_3", local(23, 11))
    group_chat(corp, "wr2", {"wm_2": local(23, 12)})
    assign_groups(corp, "S2", ["wr2"])
    customer_deletes(corp, "clerk_c", "wm_3", local(24, 9))

    rows = store_funnel(corp, KpiFilter(START, END, stores=frozenset({"S1"})), tz=TZ)
    assert [r.store_code for r in rows] == ["S1"]
    [s1] = rows
    assert (s1.scans, s1.group_joins, s1.members, s1.churned) == (1, 0, 0, 0)
    assert set(staff(s1)) == {"clerk_a", "clerk_b"}
    assert store_funnel(corp, KpiFilter(START, END, stores=frozenset()), tz=TZ) == []
    assert store_funnel(corp, KpiFilter(START, END, stores=frozenset({"NOPE"})), tz=TZ) == []


def test_local_day_boundaries_in_shanghai(corp, monkeypatch):
    """23:30 local on the last day is in; 00:10 local the next day is out (that is 16:10 UTC on the
    last day); 23:50 local the day before the first is out, 00:05 on the first day is in.
    Mutation tried: bounds taken as UTC days instead of Shanghai's: the 00:10 events were
    counted and the 00:05 ones were not; failed."""
    edge_in, edge_out = local(24, 23, 30), local(25, 0, 10)
    first_in, first_out = local(23, 0, 5), local(22, 23, 50)
    scan(corp, "S1", "clerk_a", "wm_in", edge_in)
    scan(corp, "S1", "clerk_a", "wm_first", first_in)
    scan(corp, "S1", "clerk_a", "wm_out", edge_out)
    scan(corp, "S1", "clerk_b", "wm_before", first_out)
    group_chat(corp, "wr1", {"wm_in": edge_in, "wm_out": edge_out, "wm_first": first_in, "wm_before": first_out,
                             "wm_leaves_in": first_out, "wm_leaves_out": first_out})
    assign_groups(corp, "S1", ["wr1"])
    group_chat(corp, "wr1", {"wm_in": edge_in, "wm_out": edge_out, "wm_first": first_in, "wm_before": first_out,
                             "wm_leaves_out": first_out}, left_at=edge_in, monkeypatch=monkeypatch)
    group_chat(corp, "wr1", {"wm_in": edge_in, "wm_out": edge_out, "wm_first": first_in, "wm_before": first_out},
               left_at=edge_out, monkeypatch=monkeypatch)
    customer_deletes(corp, "clerk_a", "wm_in", edge_in)
    customer_deletes(corp, "clerk_a", "wm_out", edge_out)

    s1 = funnel(corp)["S1"]
    assert staff(s1) == {"clerk_a": ("王店员", 2, 2), "clerk_b": ("李店员", 0, 0)}
    assert (s1.group_joins, s1.group_leaves, s1.churned) == (2, 1, 1)
    nxt = funnel(corp, KpiFilter(dt.date(2026, 11, 25), dt.date(2026, 11, 25)))["S1"]
    assert (nxt.scans, nxt.group_joins, nxt.group_leaves, nxt.churned) == (1, 1, 1, 1)


def test_a_closed_store_is_listed_only_with_figures(corp):
    """A closed store with nothing in the range is not noise on the page; with a scan it shows; an
    open one with nothing is listed. (Mutation tried: hiding every store without figures: the
    silent open S1 went missing; failed.)"""
    import_stores(corp, [StoreRow(code="S3", name="静安店", status=StoreStatus.closed, columns=frozenset(
        {"code", "name", "status"}))])
    assert list(funnel(corp)) == ["S1", "S2"]
    import_stores(corp, [StoreRow(code="S2", name="国贸店", status=StoreStatus.closed, columns=frozenset(
        {"code", "name", "status"}))])
    scan(corp, "S2", "clerk_c", "wm_1", local(23, 10))
    assert {code: r.scans for code, r in funnel(corp).items()} == {"S1": 0, "S2": 1}

"""The demo corp is a small store chain: stores in several cities with real coordinates, staff who
are WeCom members, groups named after their store and owned by its first staff member, customers
who follow the store's staff and sit in its groups, and a seed result that says, per store code,
which groups and staff are the store's (what scrm's demo wiring attaches)."""

from __future__ import annotations

import re
from collections import Counter

from scrm.sandbox import DEMO_STORES, Sandbox, seed_demo

STORE_CODE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
# mainland China, roughly: a store at (0, 0) or with latitude and longitude swapped is caught
CHINA_LAT, CHINA_LNG = (18.0, 54.0), (73.0, 135.0)


def test_the_chain_is_six_stores_in_three_cities_with_codes_and_coordinates():
    assert len(DEMO_STORES) == 6
    assert Counter(s.city for s in DEMO_STORES) == {"北京": 3, "上海": 2, "深圳": 1}
    codes = [s.code for s in DEMO_STORES]
    assert len(set(codes)) == len(codes) and all(STORE_CODE.match(c) for c in codes)
    for store in DEMO_STORES:
        assert CHINA_LAT[0] < store.latitude < CHINA_LAT[1] and CHINA_LNG[0] < store.longitude < CHINA_LNG[1]
        assert store.address.startswith(store.city + "市")
        assert 1 <= len(store.staff) <= 3 and 1 <= len(store.group_names) <= 2
        assert all(name.startswith(store.name) for name in store.group_names)
        assert len(store.state) <= 30  # WeCom's limit on a contact way's state
    userids = [u for s in DEMO_STORES for u, _ in s.staff]
    assert len(set(userids)) == len(userids)  # one store per staff member
    # stores of one city are apart (a routing demo needs them at distinct places)
    points = {(round(s.latitude, 3), round(s.longitude, 3)) for s in DEMO_STORES}
    assert len(points) == len(DEMO_STORES)


def test_seed_builds_each_store_and_reports_its_groups_and_staff_by_code(clock):
    sb = Sandbox(clock=clock)
    seeded = seed_demo(sb)
    assert sb.demo is seeded
    by_code = {entry["code"]: entry for entry in seeded["stores"]}
    assert list(by_code) == [s.code for s in DEMO_STORES]
    store_tags = seeded["tag_groups"]["门店"]
    assert set(store_tags) == {s.name for s in DEMO_STORES}
    assert set(seeded["tag_groups"]["用户分层"]) == {"新客", "活跃", "沉睡"}
    assert {g.group_name for g in sb.tag_groups.values()} == {"门店", "用户分层"}

    for store in DEMO_STORES:
        entry = by_code[store.code]
        staff = [u for u, _ in store.staff]
        assert entry["staff"] == staff and entry["owner"] == staff[0] and entry["city"] == store.city
        assert [sb.members[u].name for u in staff] == [name for _, name in store.staff]
        groups = [sb.groups[c] for c in entry["chat_ids"]]
        assert [g.name for g in groups] == list(store.group_names)
        assert all(g.owner == staff[0] for g in groups)
        assert all(set(staff) <= set(g.member_ids()) for g in groups)
        # the store's customers follow its staff, carry its 门店 tag and are in its groups
        assert len(entry["customers"]) >= 3
        in_groups = {m.userid for g in groups for m in g.members if m.type == 2}
        assert in_groups == set(entry["customers"])
        for eid in entry["customers"]:
            [follow] = [f for (u, e), f in sb.follows.items() if e == eid]
            assert follow.userid in staff and store_tags[store.name] in follow.tag_ids
            assert follow.state == entry["contact_way"]["state"]
        way = sb.contact_ways[entry["contact_way"]["config_id"]]
        assert way.user == staff
        assert sb.join_ways[entry["join_way_config_id"]].chat_id_list == entry["chat_ids"]

    assert len(sb.groups) == sum(len(s.group_names) for s in DEMO_STORES)


def test_seeding_an_already_seeded_corp_adds_nothing(clock):
    sb = Sandbox(clock=clock)
    first = seed_demo(sb)
    sizes = (len(sb.members), len(sb.customers), len(sb.groups), len(sb.tags), len(sb.contact_ways))
    assert seed_demo(sb) == first
    assert (len(sb.members), len(sb.customers), len(sb.groups), len(sb.tags), len(sb.contact_ways)) == sizes

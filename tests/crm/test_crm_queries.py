"""scrm.crm.queries against figures computed in plain Python (an oracle written from the rules,
not from the SQL) on random worlds, SQLite and PostgreSQL: who is in a scope, the list's order by
last contact and its pages, the search by name and partial mobile, the timeline's pages and the
page a message is on.

Mutations tried (each made the named tests fail, then was undone):
- the list ordered by ``eu`` alone (last contact ignored): test_customer_list_matches_the_oracle;
- ``nulls_last`` dropped (never-contacted customers first on PostgreSQL):
  test_customer_list_matches_the_oracle[postgres];
- the remark search not narrowed to the rep: test_search_matches_the_oracle (a rep found another rep's remark);
- the timeline's ``msgtype != 'revoke'`` filter removed: test_timeline_pages_match_the_oracle;
- page_of_message's tie-break on id reversed (``MSG.id < message_id``): test_timeline_pages_match_the_oracle
  (messages sent in the same second landed on the wrong page).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from scrm.auth.roles import Principal, Role
from scrm.contacts.models import Customer, FollowRelation
from scrm.crm import queries
from scrm.orders.models import CustomerMobile
from tests.crm.page_builders import NOW, add_rows, customer, follow, insert_messages, message

REPS = ["r1", "r2", "r3"]
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def random_world(engine, seed: int):
    """Customers with random names, mobiles (stored, or only on their calls), followers (active or
    not) and messages; returns what the oracle reads."""
    rng = random.Random(seed)
    world = {"customers": {}, "follows": [], "mobiles": [], "messages": []}
    for i in range(60):
        eu = f"c{i:02d}"
        name = rng.choice(["张", "李", "王", "Anna", "bob"]) + str(rng.randint(0, 9))
        world["customers"][eu] = name
        for rep in REPS:
            roll = rng.random()
            if roll < 0.3:
                world["follows"].append((rep, eu, "active", rng.choice([None, f"备注{i}", "VIP"])))
            elif roll < 0.4:
                world["follows"].append((rep, eu, "deleted_by_customer", "VIP"))
        mobile = f"+86138{rng.randint(0, 99999999):08d}"
        if rng.random() < 0.7:
            world["mobiles"].append((eu, mobile))
        for _ in range(rng.randint(0, 6)):
            at = T0 + dt.timedelta(seconds=rng.choice([0, 60, 3600, 86400]) * rng.randint(0, 20))
            channel = rng.choice(["chat", "call", "sms"])
            world["messages"].append(message(eu, at, "hi", channel=channel,
                                             mobile=mobile if channel != "chat" else None,
                                             msgtype="revoke" if rng.random() < 0.1 else None))
    add_rows(engine, Customer, [customer(eu, n) for eu, n in world["customers"].items()])
    add_rows(engine, FollowRelation, [follow(rep, eu, remark=remark, status=status)
                                      for rep, eu, status, remark in world["follows"]])
    add_rows(engine, CustomerMobile, [dict(mobile=m, external_userid=eu, source="order", created_at=NOW)
                                      for eu, m in world["mobiles"]])
    ids = insert_messages(engine, world["messages"])
    for row, id_ in zip(world["messages"], ids, strict=True):
        row["id"] = id_
    return world


def oracle_scope(world, rep: str | None) -> set[str]:
    return {eu for r, eu, status, _ in world["follows"] if status == "active" and (rep is None or r == rep)}


def oracle_order(world, ids: set[str]) -> list[str]:
    last: dict[str, dt.datetime] = {}
    for m in world["messages"]:
        if m["external_userid"] in ids:
            last[m["external_userid"]] = max(last.get(m["external_userid"], m["sent_at"]), m["sent_at"])
    contacted = sorted((eu for eu in ids if eu in last), key=lambda eu: (-last[eu].timestamp(), eu))
    return contacted + sorted(eu for eu in ids if eu not in last)


def oracle_search(world, rep: str | None, typed: str) -> set[str]:
    # a partial mobile: only digits (and a leading +) once spaces, dashes and brackets are dropped
    compact = "".join(ch for ch in typed if ch not in " -()（）.\u3000")
    digits = compact if compact.lstrip("+").isdigit() and compact.count("+") <= int(compact.startswith("+")) else ""
    found = set()
    for eu in oracle_scope(world, rep):
        if typed.lower() in world["customers"][eu].lower():
            found.add(eu)
        if any(typed.lower() in (remark or "").lower() for r, e, status, remark in world["follows"]
               if e == eu and status == "active" and (rep is None or r == rep)):
            found.add(eu)
        mobiles = {m for e, m in world["mobiles"] if e == eu}
        mobiles |= {m["mobile"] for m in world["messages"] if m["external_userid"] == eu and m["mobile"]}
        if digits and any(digits in m for m in mobiles):
            found.add(eu)
    return found


def everyone(engine, scope, search=None, per_page=7) -> list[str]:
    out, page = [], 1
    while True:
        got = queries.customer_list(engine, scope, search=search, page=page, per_page=per_page)
        out += [r.external_userid for r in got.rows]
        if page >= got.pages:
            assert len(out) == got.total
            return out
        page += 1


@pytest.mark.parametrize("seed", [1, 2])
def test_customer_list_matches_the_oracle(engine, seed):
    world = random_world(engine, seed)
    for rep in [*REPS, None]:
        scope = queries.CrmScope("viewer", rep is None, rep)
        assert everyone(engine, scope) == oracle_order(world, oracle_scope(world, rep)), rep


@pytest.mark.parametrize("seed", [3])
def test_search_matches_the_oracle(engine, seed):
    world = random_world(engine, seed)
    rng = random.Random(seed)
    terms = ["张", "anna", "VIP", "备注1", "%", "_"]
    for _, m in world["mobiles"][:8]:
        digits = m[1:]
        start = rng.randint(0, 8)
        part = digits[start:start + rng.randint(3, 6)]
        terms += [part, " ".join([part[:2], part[2:]]), "+" + digits[:5]]
    for rep in [*REPS, None]:
        scope = queries.CrmScope("viewer", rep is None, rep)
        for typed in terms:
            search = queries.parse_search(typed)
            got = everyone(engine, scope, search)
            assert set(got) == oracle_search(world, rep, typed), (rep, typed)
            assert got == oracle_order(world, set(got))


def test_timeline_pages_match_the_oracle(engine):
    rng = random.Random(5)
    rows = [message("cT", T0 + dt.timedelta(seconds=rng.choice([0, 1, 2, 30]) * i // 3), f"m{i}",
                    channel=rng.choice(["chat", "call", "sms"]), msgtype="revoke" if i % 17 == 0 else None)
            for i in range(230)]
    rows.append(message("other", T0, "not theirs"))
    ids = insert_messages(engine, rows)
    for row, id_ in zip(rows, ids, strict=True):
        row["id"] = id_
    expected = sorted((r for r in rows if r["external_userid"] == "cT" and r["msgtype"] != "revoke"),
                      key=lambda r: (r["sent_at"], r["id"]), reverse=True)
    seen = []
    page = 1
    while True:
        got = queries.timeline(engine, "cT", page=page, per_page=40)
        assert got.total == len(expected)
        seen += [m.id for m in got.items]
        if not got.has_earlier:
            break
        page += 1
    assert seen == [r["id"] for r in expected]
    for index, r in enumerate(expected):
        assert queries.page_of_message(engine, "cT", r["id"], per_page=40) == index // 40 + 1
    assert queries.page_of_message(engine, "cT", ids[-1]) is None  # another customer's
    assert queries.page_of_message(engine, "cT", ids[0]) is None  # a recall row


@pytest.mark.parametrize(("typed", "mobile"), [
    ("8000", "8000"), ("138 0013", "1380013"), ("+86 138", "+86138"), ("0086-138-0013", "+861380013"),
    ("（138）0013", "1380013"), ("张三", None), ("138a", None), ("", None)])
def test_parse_search(typed, mobile):
    search = queries.parse_search(typed)
    assert search.mobile == mobile
    assert search.active == bool(typed)


def test_parse_search_refuses_a_novel():
    with pytest.raises(queries.BadQuery, match="太长"):
        queries.parse_search("1" * 65)


def test_scope_by_role():
    def p(*roles):
        return Principal("u1", "某人", frozenset(roles))

    assert queries.scope_for(p(Role.sales_rep), "someone-else") == queries.CrmScope("u1", False, "u1")
    assert queries.scope_for(p(Role.manager), "r2") == queries.CrmScope("u1", True, "r2")
    assert queries.scope_for(p(Role.manager, Role.sales_rep)).sees_all
    for roles in ((Role.store_staff,), (Role.operator,), ()):
        with pytest.raises(queries.NotAllowed):
            queries.scope_for(p(*roles))


def test_newest_messages_walk_never_guesses_at_a_tie(engine):
    """The manager's unfiltered list reads only the newest messages for its first pages; customers
    whose last message ties with the oldest message read are not placed from it (one of them may
    lie outside), so the page is still ordered by (last contact, id). Mutation: ``>=`` instead of
    ``>`` in _recent_first's HAVING put z9 (inside the read window) before b0..b8 (outside)."""
    ids = ["a1", "z9", *[f"b{i}" for i in range(9)]]
    add_rows(engine, Customer, [customer(eu, eu) for eu in ids])
    add_rows(engine, FollowRelation, [follow("r1", eu) for eu in ids])
    late, tie = T0 + dt.timedelta(hours=1), T0
    insert_messages(engine, [message("a1", late, "x") for _ in range(queries.RECENT_WALK_FACTOR * 2 - 1)]
                    + [message("z9", tie, "z")] + [message(f"b{i}", tie, "b") for i in range(9)])
    scope = queries.CrmScope("boss", True, None)
    got = queries.customer_list(engine, scope, per_page=2)
    assert [r.external_userid for r in got.rows] == ["a1", "b0"]
    assert everyone(engine, scope, per_page=2) == ["a1", *[f"b{i}" for i in range(9)], "z9"]

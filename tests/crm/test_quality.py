"""Service quality on SQLite and PostgreSQL, against figures computed independently from the raw
messages: sessions by the oracle's plain loop, replies by a forward scan, waiting time by
minute-by-minute stepping, risky phrases by substring search of the rules' keywords.

Mutations tried, each seen to fail here: unanswered counted with ``>=`` instead of ``>`` the
threshold (a turn of exactly 30 business minutes); still-waiting turns not aged at ``now``
(unanswered too low); the range's end date excluded (sessions too low); rep names from users.name
winning over employees.name; unanswered_messages in wall time, not business time (a night wait
listed). Not caught: risky events credited to the session's rep instead of the writer (every
customer here has one rep)."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from collections import defaultdict

import sqlalchemy as sa

from scrm.auth.models import User
from scrm.contacts.models import Customer, Employee
from scrm.crm.quality import NO_REP, NO_STORE, quality_table, risky_replies, unanswered_messages
from scrm.crm.service import rebuild_all
from scrm.layers.models import CustomerLayer
from scrm.stores.models import Store
from tests.crm.builders import TZ, insert, local, msg, rules, settings
from tests.crm.oracle import business_seconds_by_minute, split_sessions

BASE = local(2026, 11, 23, 0)  # Monday 00:00 Shanghai
STEPS = [1, 5, 29, 30, 31, 90, 8 * 60 - 1, 8 * 60, 8 * 60 + 1, 13 * 60, 26 * 60]
INBOUND = ["在吗", "拿铁多少钱？", "好的", "我要投诉", "能开发票吗", "谢谢", "下周三要30杯"]
OUTBOUND = ["您好，在的", "18元一杯", "你自己看菜单", "保证赚钱", "好的稍等", "不知道，别问了", "转我微信"]
REPS = {"r1": "rep", "r2": "user", "r3": None}  # where the name is: employees, users, nowhere
STORES = {"BJ001": "北京国贸店", "SH002": None}  # SH002 has no stores row
NOW = BASE + dt.timedelta(days=12)


def world(seed: int):
    rnd = random.Random(seed)
    rows, homes = [], {}
    for c in range(14):
        ext = f"c{c:02d}"
        rep = rnd.choice(list(REPS))
        homes[ext] = rnd.choice([*STORES, None])
        t = BASE + dt.timedelta(minutes=rnd.randrange(0, 3 * 24 * 60))
        for _ in range(rnd.randrange(1, 12)):
            t += dt.timedelta(minutes=rnd.choice(STEPS))
            out = rnd.random() < 0.45
            rows.append(msg(ext, t, rnd.choice(OUTBOUND if out else INBOUND), out=out, userid=rep if out else None,
                            channel=rnd.choice(["chat", "chat", "sms", "call"]), revoked=rnd.random() < 0.08))
    # A turn answered after exactly 30 business minutes, and one still waiting overnight.
    rows.append(msg("edge", local(2026, 11, 24, 10, 0), "几点关门？"))
    rows.append(msg("edge", local(2026, 11, 24, 10, 30), "九点", out=True, userid="r1"))
    rows.append(msg("night", NOW - dt.timedelta(hours=2), "还在吗？"))  # 22:00 local: no business time since
    homes["edge"] = homes["night"] = "BJ001"
    return rows, homes


def load(engine, rows, homes):
    insert(engine, rows)
    with engine.begin() as conn:
        conn.execute(sa.insert(Employee.__table__), [dict(userid="r1", name="张三")])
        conn.execute(sa.insert(User.__table__), [dict(userid="r1", name="不该用"), dict(userid="r2", name="李四")])
        conn.execute(sa.insert(Store.__table__), [dict(code="BJ001", name="北京国贸店")])
        conn.execute(sa.insert(Customer.__table__), [dict(external_userid="c00", name="王五", mobiles=[])])
        layers = [dict(external_userid=e, layer="x", home_store=s) for e, s in homes.items() if s]
        if layers:
            conn.execute(sa.insert(CustomerLayer.__table__), layers)


def oracle(rows, homes, *, start, end, threshold):
    """Per rep and per store: sessions, answered, first-response seconds, turns, unanswered, risky."""
    lo = dt.datetime.combine(start, dt.time(), tzinfo=TZ)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=TZ)
    phrases = [(p.id, p.keywords) for p in rules().phrases]

    def biz(a, b):
        return business_seconds_by_minute(a, b, open_minute=9 * 60, close_minute=21 * 60, days=set(range(1, 8)), tz=TZ)

    figures = {"rep": defaultdict(lambda: defaultdict(list)), "store": defaultdict(lambda: defaultdict(list))}
    unanswered_ids = set()
    risky_ids = set()
    by_customer = defaultdict(list)
    for i, r in enumerate(rows):
        by_customer[r["external_userid"]].append((r["sent_at"], i, r))
    for ext, items in by_customer.items():
        items.sort(key=lambda x: (x[0], x[1]))
        line = [r for _, _, r in items]
        live = [r for r in line if r["revoked_at"] is None]
        groups = split_sessions([r["sent_at"] for r in line], 8)

        def reply_after(r, line=line, live=live):
            later = [x for x in live if x["sent_at"] > r["sent_at"] or (x["sent_at"] == r["sent_at"] and
                                                                       line.index(x) > line.index(r))]
            return next((x for x in later if x["direction"] == "out"), None)

        def rep_of(r, reply, line=line, live=live):
            if reply is not None:
                return reply["userid"]
            before = [x for x in live if x["direction"] == "out" and line.index(x) < line.index(r)]
            return before[-1]["userid"] if before else None

        def count(kind, r, value, ext=ext, rep_of=rep_of, reply_after=reply_after):
            if not lo <= r["sent_at"] < hi:
                return
            rep = r["userid"] if kind == "risky" else rep_of(r, reply_after(r))  # risky: who wrote it
            for dim, key in (("rep", rep or ""), ("store", homes.get(ext) or "")):
                figures[dim][key][kind].append(value if kind != "risky" else 1)

        for g in groups:
            first_in = next((line[i] for i in g if line[i]["direction"] == "in" and line[i]["revoked_at"] is None),
                            None)
            if first_in is not None:
                reply = reply_after(first_in)
                count("session", first_in, biz(first_in["sent_at"], reply["sent_at"]) if reply else None)
        previous = None
        for r in live:
            if r["direction"] == "in" and (previous is None or previous["direction"] == "out"):
                reply = reply_after(r)
                waited = biz(r["sent_at"], reply["sent_at"] if reply else NOW)
                count("turn", r, waited > threshold)
                if reply is None and waited > threshold:
                    unanswered_ids.add(r["content"] + ext)
            previous = r
        for r in live:
            if r["direction"] == "out":
                for rule_id, words in phrases:
                    if any(w in r["content"] for w in words):
                        count("risky", r, 1)
                        if lo <= r["sent_at"] < hi:
                            risky_ids.add((ext, r["sent_at"], rule_id))
    out = {}
    for dim, keys in figures.items():
        rows_out = {}
        for key, f in keys.items():
            answered = [v for v in f["session"] if v is not None]
            rows_out[key] = (len(f["session"]), len(answered),
                             float(statistics.median(answered)) if answered else None,
                             float(statistics.fmean(answered)) if answered else None,
                             len(f["turn"]), sum(f["turn"]), len(f["risky"]))
        out[dim] = rows_out
    return out, unanswered_ids, risky_ids


def test_quality_figures_match_an_independent_count(engine):
    rows, homes = world(7)
    load(engine, rows, homes)
    crm = settings()
    rebuild_all(engine, now=NOW, settings=crm, tz=TZ)
    start, end = dt.date(2026, 11, 24), dt.date(2026, 12, 4)
    expected, unanswered_ids, risky_ids = oracle(rows, homes, start=start, end=end,
                                                 threshold=crm.unanswered_after_minutes * 60)
    for dim in ("rep", "store"):
        table = quality_table(engine, by=dim, start=start, end=end, tz=TZ, settings=crm, now=NOW)
        got = {r.key: (r.sessions, r.answered, r.median_first_response_seconds, r.mean_first_response_seconds,
                       r.customer_turns, r.unanswered, r.risky_replies) for r in table}
        assert got == expected[dim], (dim, got, dict(expected[dim]))
        names = {r.key: r.name for r in table}
        if dim == "rep":
            assert {k: names[k] for k in names} == {k: v for k, v in
                                                    {"r1": "张三", "r2": "李四", "r3": "r3", "": NO_REP}.items()
                                                    if k in names}
        else:
            assert {k: names[k] for k in names} == {k: v for k, v in
                                                    {"BJ001": "北京国贸店", "SH002": "SH002", "": NO_STORE}.items()
                                                    if k in names}
    assert sum(v[5] for v in expected["rep"].values()) > 0 and sum(v[6] for v in expected["rep"].values()) > 0
    only_r1 = quality_table(engine, by="rep", start=start, end=end, tz=TZ, settings=crm, now=NOW, userids=["r1"])
    assert [r.key for r in only_r1] == ["r1"]

    risky = risky_replies(engine, start=start, end=end, tz=TZ, limit=500, offset=0, rules_dir=settings().rules_dir)
    assert {(r.external_userid, r.at, r.rule_id) for r in risky} == risky_ids
    assert [r.at for r in risky] == sorted((r.at for r in risky), reverse=True)
    labels = {p.id: p.label for p in rules().phrases}
    assert all(r.label == labels[r.rule_id] and r.phrase in r.excerpt for r in risky)
    assert risky_replies(engine, start=start, end=end, tz=TZ, limit=2, offset=1) == risky[1:3]

    waiting = unanswered_messages(engine, now=NOW, settings=crm, tz=TZ, limit=500)
    assert {w.excerpt + w.external_userid for w in waiting} == {i for i in unanswered_ids}
    assert all(w.waited_business_seconds > 1800 for w in waiting)
    assert "night" not in {w.external_userid for w in waiting}
    assert [w.waited_business_seconds for w in waiting] == sorted((w.waited_business_seconds for w in waiting),
                                                                  reverse=True)


def test_a_turn_answered_in_exactly_the_threshold_is_answered(engine):
    rows = [msg("edge", local(2026, 11, 24, 10, 0), "几点关门？"),
            msg("edge", local(2026, 11, 24, 10, 30), "九点", out=True, userid="r1"),
            msg("late", local(2026, 11, 24, 20, 50), "在吗？"),
            msg("late", local(2026, 11, 25, 9, 21), "在的", out=True, userid="r1")]
    load(engine, rows, {})
    crm = settings()
    rebuild_all(engine, now=NOW, settings=crm, tz=TZ)
    (row,) = quality_table(engine, by="rep", start=dt.date(2026, 11, 24), end=dt.date(2026, 11, 24), tz=TZ,
                           settings=crm, now=NOW)
    # 30 business minutes is within the threshold; 10 + 21 = 31 minutes over the night is not.
    assert (row.sessions, row.answered, row.customer_turns, row.unanswered) == (2, 2, 2, 1)
    assert row.median_first_response_seconds == (1800 + 1860) / 2

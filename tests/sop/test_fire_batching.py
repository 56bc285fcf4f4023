"""Firing a slot of mass sends: what the owners see in their WeCom client is one task per owner and
content (not one per group), a redelivered job creates nothing twice, the sender keeps a bounded
number of add_msg_template calls in flight, and paces them under WeCom's per-minute limit.

A stand-in WeCom records every add_msg_template body; the ledger is SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select
from sqlmodel import Session

from scrm.groups.models import CustomerGroup
from scrm.sop import jobs
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.sender import SopSender
from scrm.sop.template import SopTemplate
from scrm.stores.models import Store

TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 24, 0, 30, tzinfo=dt.UTC)  # 08:30 local
DAY = dt.date(2026, 11, 24)
TEMPLATES = {
    "hello": SopTemplate.model_validate({"id": "hello", "name": "早安", "steps": [
        {"at": "08:00", "channel": "mass_send", "text": "早上好，今天第二杯半价"}]}),
    "news": SopTemplate.model_validate({"id": "news", "name": "门店早报", "steps": [
        {"at": "08:00", "channel": "mass_send", "text": "{{ store.name }}今日福利"}]}),
}


class StandIn:
    """add_msg_template answers after ``delay`` seconds; records bodies and the most calls in flight."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def add_msg_template(self, body: dict) -> dict:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            with self.lock:
                self.bodies.append(body)
                return {"msgid": f"msg{len(self.bodies)}", "fail_list": []}
        finally:
            with self.lock:
                self.in_flight -= 1


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0


def seed(engine, owners: int, per_owner: int, template: str = "hello", stores_per_owner: int = 1) -> None:
    """``owners`` owners with ``per_owner`` groups each, one due 08:00 post per group, in the order
    the planner spreads a slot: each owner's groups spaced over 20 minutes, so scheduled order
    interleaves the owners."""
    with Session(engine) as s:
        for o in range(owners):
            for k in range(stores_per_owner):
                s.add(Store(code=f"S{o}-{k}", name=f"{o}号{k}店", city="上海"))
        for o in range(owners):
            for g in range(per_owner):
                s.add(CustomerGroup(chat_id=f"wr{o:02d}-{g:03d}", name=f"群{g}", owner_userid=f"bot{o}",
                                    store_code=f"S{o}-{g % stores_per_owner}"))
        s.commit()
    rows = []
    for o in range(owners):
        for g in range(per_owner):
            at = NOW - dt.timedelta(minutes=25) + dt.timedelta(seconds=g * 1200 // per_owner)
            rows.append(dict(day=DAY, audience="group", chat_id=f"wr{o:02d}-{g:03d}", slot=1, mass_seq=1,
                             template_id=template, step_key="1", template_digest="d", channel="mass_send",
                             sender=f"bot{o}", priority=50, scheduled_for=at,
                             window_ends_at=NOW + dt.timedelta(hours=2), status=PostStatus.planned, attempts=0,
                             created_at=NOW, updated_at=NOW))
    with engine.begin() as conn:
        conn.execute(insert(SopPost.__table__), rows)


def statuses(engine) -> dict[str, int]:
    c = SopPost.__table__.c
    with engine.connect() as conn:
        out: dict[str, int] = {}
        for (status,) in conn.execute(select(c.status)):
            out[status] = out.get(status, 0) + 1
        return out


def make_sender(engine, client, **kw) -> SopSender:
    return SopSender(engine, client, lambda: TEMPLATES, tz=TZ, clock=lambda: NOW, **kw)


def fire_and_send(engine, sender, **kw) -> list[list[int]]:
    queued: list[list[int]] = []
    jobs.fire(engine, queued.append, now=NOW, **kw)
    for job in queued:
        sender.send(job)
    return queued


def test_one_owners_posts_with_the_same_content_go_out_in_one_call(engine):
    """3 owners x 150 groups, claimed in scheduled order (the owners interleaved) and queued in
    jobs of at most 200 posts: each owner gets one task holding all 150 groups.
    Mutation tried: fire() chunking the claimed ids in claim order (the old ``for_workers[i:i + chunk]``)
    -> 3 owners' posts scattered over 3 jobs, 9+ tasks, the assertion on one task per owner fails."""
    seed(engine, owners=3, per_owner=150)
    client = StandIn()
    fire_and_send(engine, make_sender(engine, client), chunk=200)
    assert statuses(engine) == {PostStatus.sent: 450}
    tasks = sorted((b["sender"], len(b["chat_id_list"])) for b in client.bodies)
    assert tasks == [("bot0", 150), ("bot1", 150), ("bot2", 150)]
    assert all(len(set(b["chat_id_list"])) == len(b["chat_id_list"]) for b in client.bodies)


def test_store_content_goes_out_once_per_owner_and_store(engine):
    """A template printing the store's name: one task per owner and store, each with that store's
    groups and its name (the content a group receives is its own store's)."""
    seed(engine, owners=2, per_owner=40, template="news", stores_per_owner=4)
    client = StandIn()
    fire_and_send(engine, make_sender(engine, client))
    assert statuses(engine) == {PostStatus.sent: 80}
    assert len(client.bodies) == 8
    for b in client.bodies:
        [store] = {int(chat.split("-")[1]) % 4 for chat in b["chat_id_list"]}
        assert len(b["chat_id_list"]) == 10
        assert b["text"]["content"] == f"{b['sender'][3:]}号{store}店今日福利"


def test_a_redelivered_job_creates_nothing_twice(engine):
    """The queue delivers a job again (a worker died before acking, or a stuck post was requeued):
    the second run finds the posts sent and calls WeCom for none of them.
    Mutation tried: send() reading posts without ``status == sending`` -> a second call per owner."""
    seed(engine, owners=2, per_owner=30)
    client = StandIn()
    sender = make_sender(engine, client)
    queued = fire_and_send(engine, sender)
    assert len(client.bodies) == 2
    for job in queued:
        assert sender.send(job) == {}
    assert len(client.bodies) == 2 and statuses(engine) == {PostStatus.sent: 60}


def test_calls_overlap_but_never_more_than_the_concurrency(engine):
    """12 owners' calls at 50 ms each with concurrency 4: at most 4 in flight, and they overlap
    (the job takes about 3 rounds, not 12).
    Mutations tried: the pool sized ``len(calls)`` and filled without the ``len(pending) <
    self.concurrency`` check -> 12 in flight; concurrency ignored (one call at a time) -> 1."""
    seed(engine, owners=12, per_owner=5)
    client = StandIn(delay=0.05)
    fire_and_send(engine, make_sender(engine, client, concurrency=4))
    assert len(client.bodies) == 12 and statuses(engine) == {PostStatus.sent: 60}
    assert client.max_in_flight == 4


def test_every_call_waits_for_the_rate_limiter(engine):
    """Each add_msg_template call takes one permit from the limiter (WeCom's 10,000 a minute per
    API is corp-wide, so every worker process shares one in Redis).
    Mutation tried: dropping ``self.rate.acquire()`` -> 0 permits for 5 calls."""
    seed(engine, owners=5, per_owner=3)
    client, limiter = StandIn(), CountingLimiter()
    fire_and_send(engine, make_sender(engine, client, rate=limiter))
    assert len(client.bodies) == 5 and limiter.acquired == 5


def test_a_tick_claims_what_wecom_takes_in_a_tick(engine):
    """The scheduler's claim per tick follows sop.fire_interval_seconds: a 30 s tick claims 4,500
    (half of the 9,000 calls a minute the sender allows itself), never fewer than 2,000; fire()
    claims no more than it is told.
    Mutation tried: fire() ignoring ``claim`` (claim_due's own 2,000) -> 10 claimed, not 7."""
    from scrm.config import SopSettings

    assert jobs.claim_limit(SopSettings()) == 4500
    assert jobs.claim_limit(SopSettings(fire_interval_seconds=5)) == 2000
    seed(engine, owners=2, per_owner=5)
    queued: list[list[int]] = []
    counts = jobs.fire(engine, queued.append, now=NOW, claim=7)
    assert counts["mass_send"] == 7 and sum(map(len, queued)) == 7


@pytest.mark.parametrize("job_posts", [1, 4, 1000])
def test_jobs_keep_a_senders_step_together_and_lose_no_post(engine, job_posts):
    """send_jobs: every claimed id in exactly one job; a sender's posts of one step never split
    across jobs (below WeCom's call size), whatever the job size."""
    seed(engine, owners=4, per_owner=6)
    c = SopPost.__table__.c
    with engine.connect() as conn:
        ids = [r.id for r in conn.execute(select(c.id).order_by(c.scheduled_for, c.id))]
        sender_of = {r.id: r.sender for r in conn.execute(select(c.id, c.sender))}
    out = jobs.send_jobs(engine, ids, job_posts=job_posts)
    assert sorted(i for job in out for i in job) == sorted(ids)
    owners_jobs = {sender: {n for n, job in enumerate(out) if any(sender_of[i] == sender for i in job)}
                   for sender in set(sender_of.values())}
    assert all(len(v) == 1 for v in owners_jobs.values())


def test_one_call_failing_unexpectedly_loses_no_other_calls_outcome(engine):
    """One owner's call raises something unexpected while the others' calls go through: theirs
    are recorded sent (a retried job would find nothing to send), the failing batch goes back to
    planned for a later try (looked for first), and nothing reaches WeCom twice.
    Mutation tried: submitting ``_mass_call`` (no guard) -> the exception ends the job with the
    other owners' tasks created but their posts still ``sending``; a redelivery sends them again."""
    seed(engine, owners=6, per_owner=4)

    class Breaks(StandIn):
        def add_msg_template(self, body: dict) -> dict:
            if body["sender"] == "bot3":
                raise RuntimeError("connection pool closed")
            return super().add_msg_template(body)

    client = Breaks(delay=0.02)
    sender = make_sender(engine, client, concurrency=3)
    queued = []
    jobs.fire(engine, queued.append, now=NOW)
    for job in queued:
        try:
            sender.send(job)
        except RuntimeError:
            pass
        sender.send(job)  # the queue redelivers the job if it failed
    assert statuses(engine) == {PostStatus.sent: 20, PostStatus.planned: 4}
    assert sorted(b["sender"] for b in client.bodies) == ["bot0", "bot1", "bot2", "bot4", "bot5"]

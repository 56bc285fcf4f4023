"""The owner's side of the send ledger (scrm.sop.owner_posts), on SQLite and PostgreSQL: a post
is claimed for its owner and chat before the page sends it, then confirmed or released; a claim
whose lease passes becomes ``unconfirmed`` and is never offered again as unsent. Every assertion
re-reads the row from the database."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from scrm.groups.models import CustomerGroup
from scrm.sop import jobs, owner_posts
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.owner_posts import (
    LEASE,
    BadOwnerRequest,
    NotInWeCom,
    NotYourPost,
    Partial,
    PostNotFound,
    PostNotSendable,
)
from scrm.sop.service import claim_due, expire_overdue, requeue_stuck
from scrm.sop.template import SopTemplate
from tests.waiting import run_threads

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
AT = dt.datetime(2026, 11, 24, 4, 0, tzinfo=dt.UTC)  # 12:00 in Shanghai
NOW = AT + dt.timedelta(minutes=5)
WINDOW_END = AT + dt.timedelta(hours=3)
CONTENT = {"text": {"content": "午餐套餐来了"},
           "attachments": [{"msgtype": "link", "link": {"title": "午餐券", "url": "https://m.example.com/t/x"}}]}
LUNCH = SopTemplate.model_validate({"id": "lunch", "name": "午餐", "steps": [
    {"at": "12:00", "channel": "owner_task", "text": "{{ group.name }}的午餐来了",
     "attachments": [{"link": {"title": "午餐券", "url": "https://m.example.com/lunch"}}]}]})


@pytest.fixture
def ledger(engine):
    """owner_a has chat_a, owner_b has chat_b; one due owner task in each, content fixed."""
    with Session(engine) as s:
        s.add(CustomerGroup(chat_id="chat_a", name="A店1群", owner_userid="owner_a"))
        s.add(CustomerGroup(chat_id="chat_b", name="B店群", owner_userid="owner_b"))
        s.commit()
    return engine


def add_post(engine, chat_id="chat_a", sender="owner_a", *, status=PostStatus.due, channel="owner_task",
             content=CONTENT, slot=1, template_id="lunch", window_ends_at=WINDOW_END) -> int:
    with Session(engine) as s:
        post = SopPost(day=DAY, chat_id=chat_id, slot=slot, template_id=template_id, step_key="1",
                       template_digest="d", channel=channel, sender=sender, scheduled_for=AT,
                       window_ends_at=window_ends_at, status=status, content=content)
        s.add(post)
        s.commit()
        return post.id


def row(engine, post_id) -> SopPost:
    with Session(engine) as s:
        return s.get(SopPost, post_id)


def snapshot(engine, post_id):
    p = row(engine, post_id)
    return (p.status, p.sent_by, p.claimed_by, p.lease_until, p.sent_at, p.error)


def at_utc(value):
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_claim_takes_a_due_post_for_its_owner_and_chat_with_a_lease(ledger):
    post_id = add_post(ledger)
    claim = owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert claim.content == CONTENT and claim.lease_until == NOW + LEASE
    p = row(ledger, post_id)
    assert (p.status, p.claimed_by, p.sent_by) == (PostStatus.sending, "owner_a", None)
    assert at_utc(p.lease_until) == NOW + LEASE
    # A worker never takes an owner's claim back, however old it is.
    assert requeue_stuck(ledger, NOW + dt.timedelta(hours=1)) == []
    assert row(ledger, post_id).status == PostStatus.sending


def test_another_owner_against_a_due_post_is_refused_and_the_ledger_is_unchanged(ledger):
    """Mutations tried: claim() without its _check_owner call, and also without ``sender == owner``
    in the UPDATE's WHERE: owner_b then claims (or gets 409) and this test fails on the kind/row."""
    post_id = add_post(ledger)
    before = snapshot(ledger, post_id)
    assert before[0] == PostStatus.due
    with pytest.raises(NotYourPost) as refused:
        owner_posts.claim(ledger, post_id, "owner_b", "chat_a", now=NOW)
    assert refused.value.kind == "forbidden" and "别的群主" in refused.value.message
    assert snapshot(ledger, post_id) == before  # status, sent_by, claimed_by re-read: untouched
    # Naming their own chat does not help either.
    with pytest.raises(NotYourPost):
        owner_posts.claim(ledger, post_id, "owner_b", "chat_b", now=NOW)
    assert snapshot(ledger, post_id) == before


def test_a_group_that_changed_owner_is_not_sent_by_either(ledger):
    post_id = add_post(ledger)
    with Session(ledger) as s:
        s.get(CustomerGroup, "chat_a").owner_userid = "owner_b"
        s.commit()
    for owner in ("owner_a", "owner_b"):  # planned for owner_a; the group is owner_b's now
        with pytest.raises(NotYourPost):
            owner_posts.claim(ledger, post_id, owner, "chat_a", now=NOW)
    assert row(ledger, post_id).status == PostStatus.due


def test_a_second_claim_two_tabs_at_once_and_a_claim_of_another_chat_change_nothing(ledger):
    """Four tabs tap at once: one claim. (Mutation tried: the UPDATE without its status and
    claimed_by conditions; several threads then claim and this fails.)"""
    post_id = add_post(ledger)
    results = run_threads([lambda: _try_claim(ledger, post_id)] * 4)
    assert sorted(results) == ["claimed", "refused", "refused", "refused"]  # two tabs: one send
    claimed = snapshot(ledger, post_id)
    with pytest.raises(PostNotSendable, match="正在发送"):
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert snapshot(ledger, post_id) == claimed

    other = add_post(ledger, slot=2, template_id="flash")
    with pytest.raises(PostNotSendable, match="另一个群"):
        owner_posts.claim(ledger, other, "owner_a", "chat_elsewhere", now=NOW)
    assert row(ledger, other).status == PostStatus.due


def _try_claim(engine, post_id):
    try:
        owner_posts.claim(engine, post_id, "owner_a", "chat_a", now=NOW)
        return "claimed"
    except PostNotSendable:
        return "refused"


@pytest.mark.parametrize(("status", "channel", "words"), [
    (PostStatus.planned, "owner_task", "未到时间"),
    (PostStatus.sent, "owner_task", "已经发过了"),
    (PostStatus.expired, "owner_task", "已过期"),
    (PostStatus.unconfirmed, "owner_task", "发送结果待确认"),
    (PostStatus.sending, "mass_send", "群发助手"),
])
def test_a_post_that_is_not_due_is_refused_with_its_status_in_chinese(ledger, status, channel, words):
    """Mutation tried: claim's UPDATE without ``status == due``: planned, sent, expired and
    unconfirmed posts were then claimed, and this failed."""
    post_id = add_post(ledger, status=status, channel=channel)
    before = snapshot(ledger, post_id)
    with pytest.raises(PostNotSendable, match=words) as refused:
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert refused.value.kind == "conflict"
    assert snapshot(ledger, post_id) == before


def test_a_due_post_whose_window_ended_is_refused_and_recorded_expired(ledger):
    post_id = add_post(ledger, window_ends_at=NOW - dt.timedelta(seconds=1))
    with pytest.raises(PostNotSendable, match="已过期"):
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert row(ledger, post_id).status == PostStatus.expired


def test_a_claim_from_outside_wecom_is_refused_on_a_real_corp_only(ledger):
    post_id = add_post(ledger)
    with pytest.raises(NotInWeCom) as refused:
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW, from_wecom=False)
    assert refused.value.kind == "forbidden" and "企业微信" in refused.value.message
    assert row(ledger, post_id).status == PostStatus.due
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW, from_wecom=False, sandbox=True)
    assert row(ledger, post_id).status == PostStatus.sending


def test_unknown_posts_are_not_found(ledger):
    with pytest.raises(PostNotFound) as missing:
        owner_posts.claim(ledger, 999_999, "owner_a", "chat_a", now=NOW)
    assert missing.value.kind == "not_found"
    with pytest.raises(PostNotFound):
        owner_posts.confirm(ledger, 999_999, "owner_a", now=NOW)
    with pytest.raises(PostNotFound):
        owner_posts.release(ledger, 999_999, "owner_a", now=NOW, reason="failed")


def test_confirm_records_the_claimed_post_sent_once_by_its_owner(ledger):
    """Mutation tried: confirm's UPDATE without ``claimed_by == owner``: owner_b then recorded
    owner_a's claim as sent, and this failed."""
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    # Another owner cannot confirm someone else's claim.
    held = snapshot(ledger, post_id)
    with pytest.raises(NotYourPost):
        owner_posts.confirm(ledger, post_id, "owner_b", now=NOW)
    assert snapshot(ledger, post_id) == held

    out = owner_posts.confirm(ledger, post_id, "owner_a", now=NOW + dt.timedelta(seconds=20))
    assert (out.status, out.changed) == (PostStatus.sent, True)
    p = row(ledger, post_id)
    assert (p.status, p.sent_by, p.lease_until, p.error) == (PostStatus.sent, "owner_a", None, None)
    assert at_utc(p.sent_at) == NOW + dt.timedelta(seconds=20)
    sent = snapshot(ledger, post_id)
    again = owner_posts.confirm(ledger, post_id, "owner_a", now=NOW + dt.timedelta(minutes=1))  # a second tap
    assert (again.status, again.changed) == (PostStatus.sent, False)
    assert snapshot(ledger, post_id) == sent  # sent_at not moved
    with pytest.raises(PostNotSendable, match="已经发过了"):
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    with pytest.raises(PostNotSendable, match="不能撤回"):
        owner_posts.release(ledger, post_id, "owner_a", now=NOW, reason="failed")
    assert snapshot(ledger, post_id) == sent


def test_a_confirm_without_a_claim_records_nothing(ledger):
    post_id = add_post(ledger)
    with pytest.raises(PostNotSendable, match="待发送"):
        owner_posts.confirm(ledger, post_id, "owner_a", now=NOW)
    assert snapshot(ledger, post_id)[:3] == (PostStatus.due, None, None)


def test_a_partial_send_is_recorded_sent_with_what_did_not_go(ledger):
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    with pytest.raises(BadOwnerRequest):  # nothing went is a release, not a partial confirm
        owner_posts.confirm(ledger, post_id, "owner_a", now=NOW, partial=Partial(sent=0, total=2, missing=["文字"]))
    assert row(ledger, post_id).status == PostStatus.sending
    owner_posts.confirm(ledger, post_id, "owner_a", now=NOW,
                        partial=Partial(sent=1, total=2, missing=["链接「午餐券」"]))
    p = row(ledger, post_id)
    assert p.status == PostStatus.sent and p.sent_by == "owner_a" and "链接「午餐券」" in p.error
    day = owner_posts.day_posts(ledger, "owner_a", now=NOW, tz=TZ, templates=lambda: {}, link_base="")
    shown = next(x for x in day.posts if x.id == post_id)
    assert "没有发出：链接「午餐券」" in shown.note and not shown.sendable


def test_release_puts_a_cancelled_send_back_to_due_and_it_can_be_claimed_again(ledger):
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    with pytest.raises(NotYourPost):
        owner_posts.release(ledger, post_id, "owner_b", now=NOW, reason="cancelled")
    assert row(ledger, post_id).status == PostStatus.sending
    with pytest.raises(BadOwnerRequest):
        owner_posts.release(ledger, post_id, "owner_a", now=NOW, reason="because")
    out = owner_posts.release(ledger, post_id, "owner_a", now=NOW, reason="cancelled")
    assert (out.status, out.changed) == (PostStatus.due, True)
    assert snapshot(ledger, post_id)[:4] == (PostStatus.due, None, None, None)
    twice = owner_posts.release(ledger, post_id, "owner_a", now=NOW, reason="cancelled")  # a second tap
    assert (twice.status, twice.changed) == (PostStatus.due, False)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW + dt.timedelta(minutes=1))
    assert row(ledger, post_id).status == PostStatus.sending


def test_release_after_the_window_ended_expires_the_post(ledger):
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=WINDOW_END - dt.timedelta(minutes=1))
    out = owner_posts.release(ledger, post_id, "owner_a", now=WINDOW_END + dt.timedelta(seconds=1), reason="failed")
    assert (out.status, out.changed) == (PostStatus.expired, True)
    assert row(ledger, post_id).status == PostStatus.expired


def test_a_lapsed_claim_becomes_unconfirmed_and_is_never_offered_as_unsent(ledger):
    """Mutation tried: lapse_claims putting the post back to ``due`` (as a worker's requeue
    would): it was offered again as unsent, and this failed."""
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert owner_posts.lapse_claims(ledger, NOW + LEASE - dt.timedelta(seconds=1)) == []  # lease still holds
    assert row(ledger, post_id).status == PostStatus.sending
    counts = jobs.fire(ledger, lambda ids: None, now=NOW + LEASE)
    assert counts["unconfirmed"] == 1
    p = row(ledger, post_id)
    assert (p.status, p.claimed_by, p.sent_by) == (PostStatus.unconfirmed, "owner_a", None)

    # Not sendable, not claimable, untouched by the scheduler's jobs, even after its window.
    day = owner_posts.day_posts(ledger, "owner_a", now=NOW + LEASE, tz=TZ, templates=lambda: {}, link_base="")
    shown = next(x for x in day.posts if x.id == post_id)
    assert (shown.sendable, shown.answerable, shown.status_text) == (False, True, "待确认是否发出")
    with pytest.raises(PostNotSendable):
        owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW + LEASE)
    later = WINDOW_END + dt.timedelta(minutes=1)
    assert expire_overdue(ledger, later) == 0 and claim_due(ledger, later) == {} and requeue_stuck(ledger, later) == []
    assert owner_posts.lapse_claims(ledger, later) == []
    assert row(ledger, post_id).status == PostStatus.unconfirmed
    # Another owner can't answer for it; its owner says it went: sent.
    with pytest.raises(NotYourPost):
        owner_posts.confirm(ledger, post_id, "owner_b", now=later)
    out = owner_posts.confirm(ledger, post_id, "owner_a", now=later)
    assert out.changed and row(ledger, post_id).status == PostStatus.sent


def test_an_owner_who_says_a_lapsed_post_did_not_go_gets_it_back_while_its_window_is_open(ledger):
    post_id = add_post(ledger)
    owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    owner_posts.lapse_claims(ledger, NOW + LEASE)
    out = owner_posts.release(ledger, post_id, "owner_a", now=NOW + LEASE, reason="not_sent")
    assert out.status == PostStatus.due and row(ledger, post_id).claimed_by is None
    day = owner_posts.day_posts(ledger, "owner_a", now=NOW + LEASE, tz=TZ, templates=lambda: {}, link_base="")
    assert next(x for x in day.posts if x.id == post_id).sendable


def test_the_day_fixes_a_due_post_s_content_and_explains_in_chinese_what_it_cannot_show(ledger):
    due = add_post(ledger, content=None)
    gone = add_post(ledger, content=None, slot=2, template_id="deleted_template")
    add_post(ledger, chat_id="chat_b", sender="owner_b", slot=1)  # owner_b's: not listed for owner_a
    day = owner_posts.day_posts(ledger, "owner_a", now=NOW, tz=TZ, templates=lambda: {"lunch": LUNCH},
                                link_base="http://scrm")
    assert day.day == DAY and day.groups == [{"chat_id": "chat_a", "name": "A店1群"}]
    posts = {p.id: p for p in day.posts}
    assert set(posts) == {due, gone}
    assert posts[due].sendable and posts[due].time == "12:00" and posts[due].name == "午餐"
    assert posts[due].content["text"]["content"] == "A店1群的午餐来了"
    assert posts[due].content["attachments"][0]["link"]["url"].startswith("http://scrm/t/")  # tracked
    assert row(ledger, due).content == posts[due].content  # fixed: what is sent is what is recorded
    assert not posts[gone].sendable and posts[gone].content is None
    assert "模板" in posts[gone].error and "template" not in posts[gone].error
    assert owner_posts.day_posts(ledger, "nobody", now=NOW, tz=TZ, templates=lambda: {}, link_base="").posts == []


def test_a_claim_answers_the_messages_to_send_and_refuses_a_post_with_none(ledger):
    """The page sends the server's sendChatMessage messages; a post the JS-SDK cannot put into a
    chat (an image known only by URL) is refused before it is claimed, so it stays due.
    Tried: the no-messages check removed (the post went to sending and the page had nothing to send)."""
    post_id = add_post(ledger)
    claim = owner_posts.claim(ledger, post_id, "owner_a", "chat_a", now=NOW)
    assert [(m["label"], m["msg"]["msgtype"]) for m in claim.messages] == [("文字", "text"), ("链接「午餐券」", "news")]
    assert claim.messages[1]["manual"] == "午餐券\nhttps://m.example.com/t/x"
    image_only = add_post(ledger, slot=2, template_id="poster", content={
        "attachments": [{"msgtype": "image", "image": {"pic_url": "https://img.example.com/a.png"}}]})
    before = snapshot(ledger, image_only)
    with pytest.raises(PostNotSendable, match="没有能从工具栏发到群里的消息"):
        owner_posts.claim(ledger, image_only, "owner_a", "chat_a", now=NOW)
    assert snapshot(ledger, image_only) == before and before[0] == PostStatus.due

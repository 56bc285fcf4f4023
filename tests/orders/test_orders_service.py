"""Recording orders and refunds: matching precedence, unmatched orders kept, idempotency by id,
refund limits (also under racing partial refunds), and the mobile index backfill."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from scrm.orders import service
from scrm.orders.models import CustomerMobile, Order, Refund
from scrm.orders.schema import OrderIn, RefundIn
from tests.orders.conftest import add_customer, order_payload
from tests.waiting import run_threads


def order(order_id="SO-1", **kw) -> OrderIn:
    return OrderIn.model_validate(order_payload(order_id, **kw))


def refund(refund_id, amount_fen, order_id="SO-1") -> RefundIn:
    return RefundIn(refund_id=refund_id, order_id=order_id, amount_fen=amount_fen,
                    refunded_at="2026-12-01T09:00:00+08:00")


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def test_matching_precedence_external_userid_then_unionid_then_mobile(customers):
    """Each identifier wins over the ones after it, and an unknown one falls through to the next; SO-UNI
    carries wm_a's mobile but does not make it ambiguous (SO-MOB still finds wm_a).
    Tried: unionid checked before external_userid (SO-ALL matched wm_b) and the mobile lookup
    without the reindex (SO-MOB unmatched)."""
    service.reindex_mobiles(customers)
    cases = {
        "SO-ALL": (dict(external_userid="wm_c", unionid="u_b", mobile="13800138000"), "wm_c", "external_userid"),
        "SO-UNI": (dict(external_userid="wm_nobody", unionid="u_b", mobile="13800138000"), "wm_b", "unionid"),
        "SO-MOB": (dict(external_userid="wm_nobody", unionid="u_nobody", mobile="+86 138 0013 8000"), "wm_a",
                   "mobile"),
        "SO-MOB2": (dict(mobile="0086-139-0013-9000"), "wm_c", "mobile"),  # from customers.mobiles
    }
    for order_id, (ids, who, how) in cases.items():
        out = service.record_order(customers, order(order_id, **ids))
        assert (out.created, out.external_userid, out.matched_by) == (True, who, how), order_id


def test_an_order_that_matches_nobody_is_kept_and_counted_unmatched(customers):
    """Tried: returning before the insert when nothing matched (the order was lost)."""
    out = service.record_order(customers, order("SO-X", unionid="u_unknown", mobile="13700137000"))
    assert (out.created, out.matched) == (True, False)
    with customers.connect() as conn:
        row = conn.execute(select(Order.__table__).where(Order.__table__.c.order_id == "SO-X")).one()
    assert (row.external_userid, row.given_unionid, row.given_mobile, row.amount_fen) == (
        None, "u_unknown", "+8613700137000", 12900)
    service.record_order(customers, order("SO-Y", external_userid="wm_a"))
    assert service.order_counts(customers) == service.OrderCounts(orders=2, matched=1, unmatched=1)


def test_a_shared_mobile_matches_nobody(engine):
    """Two customers with the same mobile: the order is kept unmatched rather than put on a guess."""
    add_customer(engine, "wm_1", mobiles=["13800138000"])
    add_customer(engine, "wm_2", remark_mobiles=["138-0013-8000"])
    service.reindex_mobiles(engine)
    assert service.record_order(engine, order(mobile="13800138000")).matched is False


def test_the_same_order_again_changes_nothing_and_a_changed_one_is_refused(customers):
    """Tried: comparing only the id (the changed amount answered created=false, the 409 never came)."""
    first = service.record_order(customers, order(external_userid="wm_a"))
    again = service.record_order(customers, order(external_userid="wm_a"))
    assert (first.created, again.created, again.external_userid) == (True, False, "wm_a")
    with pytest.raises(service.OrderConflict, match=r"amount_fen was 12900, now 13900"):
        service.record_order(customers, order(external_userid="wm_a", amount_fen=13900))
    with pytest.raises(service.OrderConflict, match=r"paid_at was"):
        service.record_order(customers, order(external_userid="wm_a", paid_at="2026-11-30T10:16:00+08:00"))
    # The same instant in another zone is the same order.
    assert service.record_order(customers, order(external_userid="wm_a", paid_at="2026-11-30T02:15:00Z")
                                ).created is False
    assert count(customers, Order) == 1
    # Another source may use the same order id.
    assert service.record_order(customers, order(external_userid="wm_a", source="miniapp")).created is True


def test_racing_reports_of_one_order_record_it_once(customers):
    outs = run_threads([lambda: service.record_order(customers, order("SO-R", external_userid="wm_b"))] * 6)
    assert sorted(o.created for o in outs) == [False] * 5 + [True]
    assert count(customers, Order) == 1


def test_partial_refunds_up_to_the_order_amount_and_no_further(customers):
    """Tried: the conditional UPDATE without its ``<= amount_fen`` (the 3rd refund went through)."""
    service.record_order(customers, order(external_userid="wm_a"))  # 12900 fen
    assert service.record_refund(customers, refund("RF-1", 6450)).refunded_fen == 6450
    again = service.record_refund(customers, refund("RF-1", 6450))
    assert (again.created, again.refunded_fen) == (False, 6450)
    with pytest.raises(service.RefundExceedsOrder, match=r"to 13450 fen, more than its amount of 12900 fen "
                                                         r"\(6450 fen refunded already\)"):
        service.record_refund(customers, refund("RF-2", 7000))
    assert service.record_refund(customers, refund("RF-3", 6450)).refunded_fen == 12900
    with pytest.raises(service.RefundExceedsOrder):
        service.record_refund(customers, refund("RF-4", 1))
    with pytest.raises(service.OrderConflict, match="amount_fen was 6450, now 6451"):
        service.record_refund(customers, refund("RF-1", 6451))
    assert count(customers, Refund) == 2


def test_racing_partial_refunds_never_refund_more_than_was_paid(customers):
    """Ten refunds of 2000 fen race on a 12900-fen order: six go through, four are refused.
    Tried: checking refunded_fen in Python, then an unconditional write (this test failed)."""
    service.record_order(customers, order(external_userid="wm_a"))

    def one(i):
        try:
            return service.record_refund(customers, refund(f"RF-{i}", 2000)).created
        except service.RefundExceedsOrder:
            return "refused"

    outs = run_threads([lambda i=i: one(i) for i in range(10)])
    assert sorted(map(str, outs)) == ["True"] * 6 + ["refused"] * 4
    with customers.connect() as conn:
        assert conn.execute(select(Order.__table__.c.refunded_fen)).scalar_one() == 12000
        assert conn.execute(select(func.sum(Refund.__table__.c.amount_fen))).scalar_one() == 12000


def test_a_refund_of_an_unknown_order_is_refused(customers):
    with pytest.raises(service.OrderNotFound, match="report the order before its refunds"):
        service.record_refund(customers, refund("RF-1", 100, order_id="SO-missing"))
    assert count(customers, Refund) == 0


def test_reindex_fills_the_mobile_index_from_remark_mobiles_once(customers):
    """Tried: indexing only customers.mobiles (wm_a's remark mobile was missing)."""
    report = service.reindex_mobiles(customers)
    assert report.added == 2
    assert service.reindex_mobiles(customers).added == 0
    with customers.connect() as conn:
        rows = conn.execute(select(CustomerMobile.__table__.c.mobile, CustomerMobile.__table__.c.external_userid)
                            .order_by(CustomerMobile.__table__.c.mobile)).all()
    assert [tuple(r) for r in rows] == [("+8613800138000", "wm_a"), ("+8613900139000", "wm_c")]


def test_an_order_matched_by_id_teaches_the_index_its_mobile(customers):
    """The next order with only that mobile then finds the customer."""
    service.record_order(customers, order("SO-1", unionid="u_b", mobile="13600136000"))
    out = service.record_order(customers, order("SO-2", mobile="136 0013 6000"))
    assert (out.external_userid, out.matched_by) == ("wm_b", "mobile")

"""POST /api/orders and /api/orders/refunds: signed by HMAC-SHA256 with the shared secret, fresh,
never replayed; idempotent by id; bad input refused with a reason and nothing stored."""

from __future__ import annotations

import json
import secrets

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from scrm.orders.models import Order, Refund
from scrm.orders.signing import RedisNonces, Verifier, sign
from scrm.web.app import create_app
from scrm.wecom.crypto import CallbackCrypto
from tests.orders.conftest import order_payload

SECRET = "shop-shared-secret"
NOW = 1_796_000_000
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


class Clock:
    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def api(customers, redis_url, clock):
    r = redis_lib.Redis.from_url(redis_url)
    verifier = Verifier(secret=SECRET, nonces=RedisNonces(r), tolerance_seconds=300, clock=clock)
    app = create_app(crypto=CallbackCrypto("tok", KEY, "wworderscorp"), engine=customers, send=lambda ids: None,
                     orders_verifier=verifier)
    with TestClient(app, base_url="http://scrm") as client:
        yield client
    r.close()


def signed(body: bytes | dict, *, secret: str = SECRET, timestamp: int = NOW, nonce: str | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    nonce = nonce or secrets.token_hex(8)
    headers = {"content-type": "application/json", "x-scrm-timestamp": str(timestamp), "x-scrm-nonce": nonce,
               "x-scrm-signature": sign(secret, str(timestamp), nonce, raw)}
    return raw, headers


def post(api, body, path="/api/orders", **kw):
    raw, headers = signed(body, **kw)
    return api.post(path, content=raw, headers=headers)


def stored(engine, table=Order) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def test_a_signed_order_is_recorded_once(api, customers):
    """Tried: answering 201 for the repeat too (this test failed)."""
    body = order_payload(external_userid="wm_a")
    first = post(api, body)
    assert first.status_code == 201, first.text
    assert first.json() == {"order_id": "SO-1", "created": True, "matched": True, "matched_by": "external_userid"}
    again = post(api, body)  # the same order, signed again with a new nonce
    assert (again.status_code, again.json()["created"]) == (200, False)
    changed = post(api, {**body, "amount_fen": 13900})
    assert changed.status_code == 409
    assert "amount_fen was 12900, now 13900" in changed.json()["detail"]
    assert stored(customers) == 1


def test_what_a_forger_or_replayer_tries_is_refused_and_stores_nothing(api, customers, clock):
    """Each attempt below is refused with its reason and no order is stored. Tried: skipping the
    compare (the forged and altered bodies were stored), the window check (the stale one was), and the
    nonce store (the replay was)."""
    body = order_payload(external_userid="wm_a")
    raw, headers = signed(body)

    # A signature made with another secret.
    forged = api.post("/api/orders", content=raw, headers={**headers, "x-scrm-signature": sign(
        "guessed", headers["x-scrm-timestamp"], headers["x-scrm-nonce"], raw)})
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]
    # The body changed after signing (the amount lowered), same headers.
    altered = api.post("/api/orders", content=raw.replace(b"12900", b"1290"), headers=headers)
    assert altered.status_code == 401 and "bad signature" in altered.json()["detail"]
    # No signature at all.
    bare = api.post("/api/orders", content=raw, headers={"content-type": "application/json"})
    assert bare.status_code == 401
    assert bare.json()["detail"] == "unsigned request: missing X-Scrm-Timestamp, X-Scrm-Nonce, X-Scrm-Signature"
    # Correctly signed, but six minutes old (and six minutes ahead).
    for skew in (-360, 360):
        stale = post(api, body, timestamp=NOW + skew)
        assert stale.status_code == 401 and "stale timestamp: 360 s" in stale.json()["detail"]
    assert stored(customers) == 0

    # The genuine request goes through once; sent again byte for byte it is a replay.
    assert api.post("/api/orders", content=raw, headers=headers).status_code == 201
    clock.t += 200  # still within the window
    replay = api.post("/api/orders", content=raw, headers=headers)
    assert replay.status_code == 409 and "replayed request" in replay.json()["detail"]
    # The replay of a refund is refused the same way, and records one refund only.
    rraw, rheaders = signed({"refund_id": "RF-1", "order_id": "SO-1", "amount_fen": 100,
                             "refunded_at": "2026-12-01T09:00:00+08:00"}, timestamp=int(clock.t))
    assert api.post("/api/orders/refunds", content=rraw, headers=rheaders).status_code == 201
    assert api.post("/api/orders/refunds", content=rraw, headers=rheaders).status_code == 409
    assert (stored(customers), stored(customers, Refund)) == (1, 1)


def test_a_forged_request_does_not_use_up_the_nonce(api, customers):
    """The nonce is recorded only after the signature checks out. Tried: recording it first (the
    genuine request was then refused as a replay)."""
    body = order_payload(external_userid="wm_a")
    raw, headers = signed(body, nonce="nonce-0001")
    assert api.post("/api/orders", content=raw, headers={**headers, "x-scrm-signature": "0" * 64}).status_code == 401
    assert api.post("/api/orders", content=raw, headers=headers).status_code == 201


@pytest.mark.parametrize(("change", "says"), [
    ({"amount_fen": -1}, "amount_fen: Input should be greater than or equal to 0"),
    ({"amount_fen": 129.5}, "amount_fen: Input should be a valid integer"),
    ({"amount_fen": "12900"}, "amount_fen: Input should be a valid integer"),
    ({"paid_at": "2026-11-30T10:15:00"}, "paid_at: Input should have timezone info"),
    ({"paid_at": "yesterday"}, "paid_at: Input should be a valid datetime"),
    ({"order_id": ""}, "order_id: String should have at least 1 character"),
    ({"mobile": "010-12345678", "external_userid": ...}, "mobile: '010-12345678' is not a Chinese mobile"),
    ({"mobile": ""}, "the customer is missing: give at least one of external_userid, unionid, mobile"),
    ({"amount": 1}, "amount: Extra inputs are not permitted"),
])
def test_bad_input_is_refused_with_its_reason_and_stores_nothing(api, customers, change, says):
    """Tried: a lax int (129.5 and "12900" were stored) and no zone check (a naive paid_at was)."""
    body = {**order_payload(), **change}
    body = {k: v for k, v in body.items() if v is not ...}
    r = post(api, body)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    assert stored(customers) == 0


def test_a_body_that_is_not_json_is_refused(api, customers):
    r = post(api, b"order_id=SO-1&amount_fen=1")
    assert r.status_code == 422 and "invalid request" in r.json()["detail"]
    assert stored(customers) == 0


def test_refunds_through_the_api(api, customers):
    assert post(api, order_payload(unionid="u_b")).status_code == 201
    rf = {"refund_id": "RF-1", "order_id": "SO-1", "amount_fen": 10000, "refunded_at": "2026-12-01T09:00:00+08:00"}
    first = post(api, rf, path="/api/orders/refunds")
    assert first.status_code == 201
    assert first.json() == {"refund_id": "RF-1", "order_id": "SO-1", "created": True, "refunded_fen": 10000,
                            "amount_fen": 12900}
    assert post(api, rf, path="/api/orders/refunds").json()["created"] is False
    too_much = post(api, {**rf, "refund_id": "RF-2", "amount_fen": 3000}, path="/api/orders/refunds")
    assert too_much.status_code == 409 and "more than its amount of 12900 fen" in too_much.json()["detail"]
    unknown = post(api, {**rf, "refund_id": "RF-3", "order_id": "SO-9"}, path="/api/orders/refunds")
    assert unknown.status_code == 404
    zero = post(api, {**rf, "refund_id": "RF-4", "amount_fen": 0}, path="/api/orders/refunds")
    assert zero.status_code == 422
    assert stored(customers, Refund) == 1


def test_without_a_secret_the_api_refuses_everything(customers):
    """No secret configured: 503 with the setting to set, even for a request signed with an empty key."""
    app = create_app(crypto=CallbackCrypto("tok", KEY, "wworderscorp"), engine=customers, send=lambda ids: None)
    with TestClient(app, base_url="http://scrm") as client:
        r = post(client, order_payload(external_userid="wm_a"), secret="")
        assert r.status_code == 503 and "SCRM_ORDERS__SECRET" in r.json()["detail"]
    assert stored(customers) == 0


def test_the_order_api_is_in_the_openapi_schema(api):
    doc = api.get("/openapi.json").json()
    order = doc["paths"]["/api/orders"]["post"]
    assert "HMAC-SHA256" in order["description"]
    schema = order["requestBody"]["content"]["application/json"]["schema"]
    assert {"order_id", "paid_at", "amount_fen"} <= set(schema["required"])
    assert "from" in schema["properties"]
    assert "/api/orders/refunds" in doc["paths"]


def test_the_production_app_takes_the_secret_and_tolerance_from_settings(redis_url, monkeypatch):
    """``SCRM_ORDERS__SECRET`` and the tolerance reach the verifier app_from_settings mounts; nonces
    live in Redis for twice the tolerance. Tried: passing the tolerance default instead (120 was lost)."""
    from scrm.config import Settings
    from scrm.web.app import orders_verifier

    monkeypatch.setenv("SCRM_ORDERS__SECRET", "from-env")
    monkeypatch.setenv("SCRM_ORDERS__TIMESTAMP_TOLERANCE_SECONDS", "120")
    r = redis_lib.Redis.from_url(redis_url)
    verifier = orders_verifier(Settings(), r)
    assert (verifier.secret, verifier.tolerance_seconds) == ("from-env", 120)
    assert "from-env" not in str(Settings().redacted())
    body, ts = b"{}", str(int(verifier.clock()))
    verifier.verify(ts, "nonce-abcd", sign("from-env", ts, "nonce-abcd", body), body)
    assert 230 <= r.ttl("scrm:orders:nonce:nonce-abcd") <= 240
    r.close()

"""POST /api/crm/records: signed like the order API (own secret, own nonces), a batch of calls and
SMS answered record by record, idempotent by (channel, id). Mutations tried are in each docstring."""

from __future__ import annotations

import json
import secrets

import pytest
import redis as redis_lib
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from scrm.crm.models import CrmMessage
from scrm.orders.signing import RedisNonces, Verifier, sign
from scrm.web.crm_api import NONCE_PREFIX, crm_records_router
from tests.crm.conftest import LIU, LIU_MOBILE

SECRET = "call-centre-shared-secret"
NOW = 1_796_000_000


class Clock:
    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def redis(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    yield r
    r.close()


def client_for(engine, verifier, changed=None) -> TestClient:
    app = FastAPI()
    app.include_router(crm_records_router(engine, verifier, changed))
    return TestClient(app, base_url="http://scrm")


@pytest.fixture
def api(sample_people, redis):
    told: list[list[str]] = []
    verifier = Verifier(secret=SECRET, nonces=RedisNonces(redis, prefix=NONCE_PREFIX), tolerance_seconds=300,
                        clock=Clock())
    with client_for(sample_people, verifier, told.append) as client:
        client.told = told  # type: ignore[attr-defined]
        yield client


def signed(body, *, secret: str = SECRET, timestamp: int = NOW, nonce: str | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    nonce = nonce or secrets.token_hex(8)
    return raw, {"content-type": "application/json", "x-scrm-timestamp": str(timestamp), "x-scrm-nonce": nonce,
                 "x-scrm-signature": sign(secret, str(timestamp), nonce, raw)}


def post(api, body, **kw):
    raw, headers = signed(body, **kw)
    return api.post("/api/crm/records", content=raw, headers=headers)


def call(cid="CALL-1", **kw):
    return {"channel": "call", "id": cid, "mobile": "+86 138 0013 8000", "userid": "sales_zhang", "direction": "out",
            "started_at": "2026-11-10T15:00:00+08:00", "duration_seconds": 312, "status": "answered",
            "summary": "确认订货200杯", **kw}


def sms(sid="SMS-1", **kw):
    return {"channel": "sms", "id": sid, "mobile": "8613800138000", "userid": "sales_zhang", "direction": "in",
            "sent_at": "2026-11-10T15:30:00+08:00", "content": "收到，确认。", **kw}


def stored(engine) -> dict[tuple[str, str], dict]:
    with engine.connect() as conn:
        return {(r.channel, r.source_id): dict(r._mapping) for r in conn.execute(sa.select(CrmMessage.__table__))}


def test_a_batch_is_stored_once_with_each_records_outcome(api, sample_people):
    """Tried: answering 200 when a record was refused (the 422 and 409 checks failed) and telling the
    hook about unchanged records (it was told twice)."""
    first = post(api, {"records": [call(), sms()]})
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["created"], body["unchanged"], body["conflict"], body["invalid"]) == (2, 0, 0, 0)
    assert [(r["channel"], r["id"], r["outcome"], r["matched"]) for r in body["results"]] == [
        ("call", "CALL-1", "created", True), ("sms", "SMS-1", "created", True)]
    assert api.told == [[LIU]]
    rows = stored(sample_people)
    assert {(k, r["external_userid"], r["mobile"]) for k, r in rows.items()} == {
        (("call", "CALL-1"), LIU, LIU_MOBILE), (("sms", "SMS-1"), LIU, LIU_MOBILE)}

    again = post(api, {"records": [call(), sms()]})  # resent (new nonce): nothing changes
    assert again.status_code == 200 and again.json()["unchanged"] == 2
    assert stored(sample_people) == rows and api.told == [[LIU]]

    mixed = post(api, {"records": [call(duration_seconds=400), sms("SMS-2"), sms("SMS-3", mobile="12345"),
                                   {"channel": "fax", "id": "F1"}]})
    assert mixed.status_code == 422
    results = mixed.json()["results"]
    assert [r["outcome"] for r in results] == ["conflict", "created", "invalid", "invalid"]
    assert "duration_seconds was 312, now 400" in results[0]["error"]
    assert "not a Chinese mobile" in results[2]["error"] and results[3]["channel"] == "fax"
    assert stored(sample_people)[("call", "CALL-1")]["duration_seconds"] == 312
    assert ("sms", "SMS-2") in stored(sample_people) and ("sms", "SMS-3") not in stored(sample_people)

    conflict = post(api, {"records": [sms(content="改了")]})
    assert conflict.status_code == 409 and conflict.json()["results"][0]["outcome"] == "conflict"


def test_an_unmatched_mobile_is_stored_and_said_so(api, sample_people):
    """A mobile nobody has is stored unmatched (link_unmatched attaches it later); the hook is not told."""
    out = post(api, {"records": [sms("SMS-9", mobile="137 0013 7000")]})
    assert out.status_code == 200
    assert out.json()["results"][0] == {"index": 0, "channel": "sms", "id": "SMS-9", "outcome": "created",
                                        "matched": False}
    assert api.told == []


def test_a_body_that_is_not_a_batch_is_refused_whole(api, sample_people):
    """Tried: no upper bound on the batch (1001 records were taken)."""
    for body in (b"not json", {"records": []}, {"records": [sms(f"S{i}") for i in range(1001)]},
                 {"records": [sms()], "extra": 1}, {"records": ["a string"]}):
        out = post(api, body)
        assert out.status_code == 422, body if isinstance(body, bytes) else list(body)
        assert out.json()["detail"].startswith("invalid request")
    assert stored(sample_people) == {}


def test_forged_stale_and_replayed_requests_are_refused_and_store_nothing(api, sample_people):
    """Tried: skipping the signature check (the forged and unsigned bodies were stored)."""
    raw, headers = signed({"records": [call()]})
    forged = api.post("/api/crm/records", content=raw, headers={**headers, "x-scrm-signature": sign(
        "guessed", headers["x-scrm-timestamp"], headers["x-scrm-nonce"], raw)})
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]
    bare = api.post("/api/crm/records", content=raw, headers={"content-type": "application/json"})
    assert bare.status_code == 401 and "unsigned request" in bare.json()["detail"]
    stale = post(api, {"records": [call()]}, timestamp=NOW - 400)
    assert stale.status_code == 401 and "stale timestamp" in stale.json()["detail"]
    assert stored(sample_people) == {}
    assert api.post("/api/crm/records", content=raw, headers=headers).status_code == 200
    replay = api.post("/api/crm/records", content=raw, headers=headers)
    assert replay.status_code == 409 and "replayed request" in replay.json()["detail"]
    assert len(stored(sample_people)) == 1


def test_nonces_are_apart_from_the_order_apis(api, redis):
    """A nonce the order API used does not block the records API. Tried: the orders' prefix (the
    request was refused as a replay)."""
    nonce = "shared-nonce-0001"
    assert RedisNonces(redis).first_use(nonce, 600)  # the order API's prefix
    assert post(api, {"records": [sms()]}, nonce=nonce).status_code == 200


def test_without_a_secret_the_api_answers_503_naming_the_setting(sample_people, redis):
    """Tried: passing the order API's message through (it named SCRM_ORDERS__SECRET)."""
    verifier = Verifier(secret="", nonces=RedisNonces(redis, prefix=NONCE_PREFIX), clock=Clock())
    with client_for(sample_people, verifier) as client:
        raw, headers = signed({"records": [sms()]})
        out = client.post("/api/crm/records", content=raw, headers=headers)
    assert out.status_code == 503 and "SCRM_CRM__SECRET" in out.json()["detail"]
    assert stored(sample_people) == {}


def test_a_failing_hook_does_not_lose_the_records(sample_people, redis):
    """Tried: not catching the hook's error (the request failed after storing)."""
    def broken(ids):
        raise RuntimeError("redis down")

    verifier = Verifier(secret=SECRET, nonces=RedisNonces(redis, prefix=NONCE_PREFIX), clock=Clock())
    with client_for(sample_people, verifier, broken) as client:
        raw, headers = signed({"records": [sms()]})
        assert client.post("/api/crm/records", content=raw, headers=headers).status_code == 200
    assert ("sms", "SMS-1") in stored(sample_people)

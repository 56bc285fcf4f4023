"""The webhook receiver's answers to good and bad callbacks, and what it stores."""

from __future__ import annotations

import base64
import os

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from scrm.callbacks.models import CallbackInbox
from scrm.web.app import create_app
from scrm.wecom.crypto import CallbackCrypto
from scrm.wecom.events import render_event

CORP = "wwreceivercorp"
KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")


class FakeQueue:
    def __init__(self):
        self.sent, self.down = [], False

    def __call__(self, inbox_ids):
        if self.down:
            raise ConnectionError("redis down")
        self.sent.extend(inbox_ids)


@pytest.fixture
def setup(sqlite_engine):
    crypto = CallbackCrypto("tok", KEY, CORP)
    queue = FakeQueue()
    app = create_app(crypto=crypto, engine=sqlite_engine, send=queue, max_body_bytes=64 * 1024)
    with TestClient(app) as client:
        yield client, crypto, queue, sqlite_engine


def inbox(engine):
    with Session(engine) as s:
        return list(s.exec(select(CallbackInbox)))


def event(n=1, corp=CORP):
    return render_event(corp, "change_external_contact", "add_external_contact", 1700000000 + n,
                        UserID="zhangsan", ExternalUserID=f"wm{n}")


def post(client, params, body):
    return client.post("/wecom/callback", params=params, content=body)


def test_url_verification_answers_plain_echostr(setup):
    client, crypto, _, _ = setup
    params = crypto.sign_echo("1616140317555161061", timestamp="1409659589", nonce="263014780")
    r = client.get("/wecom/callback", params=params)
    assert r.status_code == 200 and r.text == "1616140317555161061"
    params["msg_signature"] = "f" * 40
    assert client.get("/wecom/callback", params=params).status_code == 403


def test_valid_callback_is_stored_enqueued_and_acknowledged(setup):
    client, crypto, queue, engine = setup
    r = post(client, *crypto.seal(event()))
    assert (r.status_code, r.text) == (200, "success")
    [row] = inbox(engine)
    assert row.status == "pending" and row.change_type == "add_external_contact"
    assert queue.sent == [row.id]


def test_wecom_retry_of_same_event_is_one_row(setup):
    client, crypto, queue, engine = setup
    for _ in range(3):  # WeCom retries re-encrypt the same plaintext
        assert post(client, *crypto.seal(event())).status_code == 200
    assert len(inbox(engine)) == 1 and len(queue.sent) == 1


def test_forged_signature_is_403_and_nothing_stored(setup):
    client, crypto, queue, engine = setup
    params, body = crypto.seal(event())
    params["msg_signature"] = "0" * 40
    assert post(client, params, body).status_code == 403
    forger = CallbackCrypto("guessed-token", KEY, CORP)  # right key, wrong token
    assert post(client, *forger.seal(event(2))).status_code == 403
    assert inbox(engine) == [] and queue.sent == []
    assert 'scrm_callbacks_rejected_total{reason="signature"} 2.0' in client.get("/metrics").text


def test_malformed_xml_is_400_and_nothing_stored(setup):
    client, crypto, _, engine = setup
    assert post(client, {"msg_signature": "a", "timestamp": "1", "nonce": "1"}, b"<xml><Encrypt>").status_code == 400
    # Correctly signed and encrypted, but the plaintext is not XML.
    params, body = crypto.seal("this is not xml")
    assert post(client, params, body).status_code == 400
    # An entity-expansion attempt is refused before parsing.
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><xml><Encrypt>&a;</Encrypt></xml>'
    assert post(client, {"msg_signature": "a", "timestamp": "1", "nonce": "1"}, bomb).status_code == 400
    assert inbox(engine) == []


def test_event_for_another_corp_is_400(setup):
    client, crypto, _, engine = setup
    other = CallbackCrypto("tok", KEY, "wwSomeoneElse")
    assert post(client, *other.seal(event(corp="wwSomeoneElse"))).status_code == 400
    # Right envelope corp, but the event itself names another corp.
    assert post(client, *crypto.seal(event(corp="wwSomeoneElse"))).status_code == 400
    assert inbox(engine) == []


def test_oversize_body_is_413_and_nothing_stored(setup):
    client, crypto, _, engine = setup
    params, _ = crypto.seal(event())
    r = post(client, params, b"<xml>" + b"a" * (65 * 1024) + b"</xml>")
    assert r.status_code == 413
    assert inbox(engine) == []


def test_redis_down_still_stores_and_acknowledges(setup):
    client, crypto, queue, engine = setup
    queue.down = True
    for n in range(5):
        assert post(client, *crypto.seal(event(n))).status_code == 200
    rows = inbox(engine)
    assert len(rows) == 5 and all(r.status == "pending" and r.enqueued_at is None for r in rows)


def test_health_and_readiness(setup):
    client, *_ = setup
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    assert "scrm_inbox_backlog" in client.get("/metrics").text


def test_readiness_fails_when_redis_is_unreachable(sqlite_engine):
    def ping():
        raise ConnectionError("refused")

    app = create_app(crypto=CallbackCrypto("tok", KEY, CORP), engine=sqlite_engine, send=lambda i: None,
                     redis_ping=ping)
    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("error")


def test_database_outage_answers_503_so_wecom_retries():
    """Nothing can be stored, so nothing may be acknowledged: WeCom retries on any non-200."""
    from scrm.db import make_engine

    down = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/scrm?connect_timeout=1")
    queue = FakeQueue()
    crypto = CallbackCrypto("tok", KEY, CORP)
    with TestClient(create_app(crypto=crypto, engine=down, send=queue)) as client:
        r = post(client, *crypto.seal(event()))
        assert r.status_code == 503
        assert 'scrm_callbacks_rejected_total{reason="storage"} 1.0' in client.get("/metrics").text
    assert queue.sent == []
    down.dispose()


def test_callbacks_arriving_together_are_all_stored(setup):
    """Concurrent deliveries share a commit; each gets its own row and its own answer."""
    import concurrent.futures

    client, crypto, queue, engine = setup
    sealed = [crypto.seal(event(n)) for n in range(40)] + [crypto.seal(event(0))]  # one WeCom retry
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda pb: post(client, *pb).status_code, sealed))
    assert codes == [200] * 41
    assert len(inbox(engine)) == 40 and sorted(queue.sent) == sorted(r.id for r in inbox(engine))

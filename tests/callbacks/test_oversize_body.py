"""A body over web.max_body_bytes gets its 413, over a real socket, however the client sends it.

The receiver used to answer 413 as soon as it saw the Content-Length; a client still sending
(here: one that says ``Connection: close`` and sends at network pace, as urllib does) had its
connection reset under it and saw a broken pipe instead of the 413 (5 of 8 tries in the issue).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import pytest
import uvicorn
from sqlmodel import Session, func, select

from scrm.callbacks.models import CallbackInbox
from scrm.redisserver import free_port
from scrm.web.app import create_app
from scrm.web.callback_endpoint import DRAIN_FACTOR, CallbackEndpoint
from scrm.wecom.crypto import CallbackCrypto
from tests.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")
MAX_BODY = 1024 * 1024  # the default web.max_body_bytes
TWO_MB = 2 * 1024 * 1024
QUERY = "msg_signature=a&timestamp=1&nonce=1"


@pytest.fixture(params=["httptools", "h11"])
def server(request, sqlite_engine):
    """The receiver under uvicorn on a free loopback port (both of uvicorn's HTTP parsers)."""
    app = create_app(crypto=CallbackCrypto("tok", KEY, "wwoversize"), engine=sqlite_engine, send=lambda ids: None,
                     max_body_bytes=MAX_BODY)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=request.param))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, timeout=10, what="uvicorn to start")
    yield port, sqlite_engine
    srv.should_exit = True
    thread.join(10)


def post_raw(port: int, headers: dict[str, str], body_size: int, *, pause_after_first_chunk: float = 0.05,
             chunk: int = 64 * 1024) -> tuple[str | None, str | None, bytes]:
    """POST ``body_size`` bytes over a plain socket the way a network client does (headers, a
    first chunk, a short pause, the rest), then read the answer to the end.
    Returns (status line or None, the socket error or None, raw answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = [f"POST /wecom/callback?{QUERY} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: text/xml"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    error = None
    answer = b""
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("ascii"))
        sent, data = 0, b"x" * chunk
        while sent < body_size:
            n = min(chunk, body_size - sent)
            sock.sendall(data[:n])
            sent += n
            if sent == n and pause_after_first_chunk:
                time.sleep(pause_after_first_chunk)
    except OSError as exc:  # BrokenPipeError, ConnectionResetError
        error = type(exc).__name__
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
            if b"\r\n\r\n" in answer and not _wants_more(answer):
                break
    except OSError as exc:
        error = (error + "/" if error else "") + "recv:" + type(exc).__name__
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0].decode() if answer else None
    return status, error, answer


def _wants_more(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) < int(value.strip())
    return False


def test_a_2mb_post_gets_its_413_every_time(server):
    """8 tries of 2 MB with ``Connection: close``: every one receives the 413, none a reset.
    Tried: the old receiver (413 from the Content-Length, before reading) failed this test on
    both parsers with BrokenPipeError / ConnectionResetError on most tries."""
    port, engine = server
    outcomes = [post_raw(port, {"Content-Length": str(TWO_MB), "Connection": "close"}, TWO_MB)[:2]
                for _ in range(8)]
    assert outcomes == [("HTTP/1.1 413 Request Entity Too Large", None)] * 8
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(CallbackInbox)).one() == 0


def test_a_2mb_post_on_a_kept_alive_connection_gets_its_413(server):
    """Without ``Connection: close`` the body is drained too, and the 413 keeps the connection open."""
    port, _ = server
    for _ in range(8):
        status, error, answer = post_raw(port, {"Content-Length": str(TWO_MB)}, TWO_MB)
        assert (status, error) == ("HTTP/1.1 413 Request Entity Too Large", None)
        assert b"connection: close" not in answer.lower()


def test_a_body_beyond_the_drain_limit_is_not_read(server):
    """A declared length over the drain limit is refused from the headers alone, and the
    connection is closed: the receiver never reads without limit. (Tried: draining whatever the
    Content-Length says made this hang waiting for a body the test never sends.)"""
    port, _ = server
    huge = DRAIN_FACTOR * MAX_BODY + 1
    status, error, answer = post_raw(port, {"Content-Length": str(huge)}, 0)
    assert (status, error) == ("HTTP/1.1 413 Request Entity Too Large", None)
    assert b"connection: close" in answer.lower()


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending(server):
    port, _ = server
    status, error, answer = post_raw(port, {"Content-Length": str(TWO_MB), "Expect": "100-continue"}, 0)
    assert (status, error) == ("HTTP/1.1 413 Request Entity Too Large", None)
    assert b"100 Continue" not in answer


async def _drive(endpoint: CallbackEndpoint, chunks, headers=()) -> tuple[int, int, list[bytes]]:
    """Call the ASGI app directly with a body made of ``chunks`` (an iterator, maybe endless);
    returns (status, bytes handed to the app, response headers)."""
    fed = 0
    source = iter(chunks)

    async def receive():
        nonlocal fed
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        fed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/wecom/callback", "query_string": QUERY.encode(),
             "headers": list(headers)}
    await endpoint(scope, receive, send)
    start = sent[0]
    return start["status"], fed, [name for name, _ in start["headers"]]


def _endpoint(**kw) -> CallbackEndpoint:
    return CallbackEndpoint(None, crypto=CallbackCrypto("tok", KEY, "wwoversize"), store=None,
                            on_result=lambda outcome: None, **kw)


@pytest.mark.timeout(30)
def test_an_endless_chunked_body_is_read_only_up_to_the_drain_limit():
    """No Content-Length and a body that never ends: reading stops just past the drain limit,
    413 with Connection: close. (Tried: without the drain limit check this never returns; the
    30 s timeout below fails it.)"""
    import asyncio
    import itertools

    endpoint = _endpoint(max_body_bytes=1000, drain_limit_bytes=5000)
    status, fed, headers = asyncio.run(_drive(endpoint, itertools.repeat(b"x" * 300)))
    assert status == 413 and 5000 < fed <= 5300 and b"connection" in headers


def test_a_body_over_the_limit_but_under_the_drain_limit_is_read_to_its_end():
    import asyncio

    endpoint = _endpoint(max_body_bytes=1000, drain_limit_bytes=5000)
    status, fed, headers = asyncio.run(_drive(endpoint, [b"x" * 300] * 10))
    assert status == 413 and fed == 3000 and b"connection" not in headers
    assert endpoint.drain_limit_bytes == 5000
    assert _endpoint(max_body_bytes=1000).drain_limit_bytes == DRAIN_FACTOR * 1000

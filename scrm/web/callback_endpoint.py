"""POST /wecom/callback as a bare ASGI app in front of FastAPI.

WeCom retries a callback that is not answered within 5 s and the receiver is the one part of
scrm that takes bursts (a store event, a mass join), so its hot path skips FastAPI's routing,
dependency solving and response classes: it reads the body with a size cap, opens the envelope,
stores the row through the group-commit writer and answers. Every other request (including GET
URL verification) goes to ``rest`` (default: the FastAPI app; ``create_app`` puts the ``/t/``
fast path, :mod:`scrm.web.click_fastpath`, there), while ``.api`` stays the FastAPI app.

A body over ``max_body_bytes`` is read and thrown away (up to ``drain_limit_bytes``) before the
413: answering while the client is still sending makes the server close a socket with unread
data, the kernel resets the connection, and the client sees a broken pipe instead of the 413.
Beyond the drain limit (or when the client waits for ``100 Continue``) nothing more is read: the
413 goes out with ``Connection: close``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from scrm.callbacks.ingest import open_callback
from scrm.logs import get_logger
from scrm.wecom.crypto import CallbackCrypto, CorpMismatch, SignatureError
from scrm.wecom.errors import CallbackError

log = get_logger(__name__)

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_CLOSE = (b"connection", b"close")
# How much of an oversize body is read (and discarded) so the client gets its 413, as a multiple
# of max_body_bytes.
DRAIN_FACTOR = 8


class BodyTooLarge(Exception):
    def __init__(self, *, read: int, close: bool):
        super().__init__(f"body over limit ({read} bytes read)")
        self.read, self.close = read, close


class CallbackEndpoint:
    """ASGI app answering ``POST path`` itself and passing the rest to ``api`` (the FastAPI app);
    ``on_result(outcome)`` feeds the metrics."""

    def __init__(
        self,
        api,
        *,
        crypto: CallbackCrypto,
        store: Callable[[dict], Awaitable[int | None]],
        on_result: Callable[[str], None],
        path: str = "/wecom/callback",
        max_body_bytes: int = 1024 * 1024,
        drain_limit_bytes: int | None = None,
        rest=None,
    ):
        self.rest = rest if rest is not None else api
        self.api, self.crypto, self.store, self.on_result = api, crypto, store, on_result
        self.path, self.max_body_bytes = path, max_body_bytes
        self.drain_limit_bytes = max(drain_limit_bytes or DRAIN_FACTOR * max_body_bytes, max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.rest(scope, receive, send)
            return
        status, text, close = await self._handle(scope, receive)
        body = text.encode("utf-8")
        headers = [_TEXT, (b"content-length", str(len(body)).encode("ascii"))]
        if close:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope, receive) -> tuple[int, str, bool]:
        """(status, text, close the connection after answering)."""
        try:
            body = await self._read_body(scope, receive)
        except BodyTooLarge as exc:
            return (*self._refuse(413, "too_large", str(exc)), exc.close)
        return (*await self._answer(scope, body), False)

    async def _answer(self, scope, body: bytes) -> tuple[int, str]:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            row = open_callback(
                self.crypto,
                body=body,
                msg_signature=query.get("msg_signature", ""),
                timestamp=query.get("timestamp", ""),
                nonce=query.get("nonce", ""),
            )
        except SignatureError as exc:
            return self._refuse(403, "signature", str(exc))
        except CorpMismatch as exc:
            return self._refuse(400, "wrong_corp", str(exc))
        except CallbackError as exc:
            return self._refuse(400, "malformed", str(exc))
        try:
            inbox_id = await self.store(row)
        except Exception as exc:  # database down: not stored, so WeCom must retry
            self.on_result("storage")
            log.error("callback_not_stored", error=type(exc).__name__)
            return 503, "storage unavailable"
        self.on_result("duplicate" if inbox_id is None else "stored")
        return 200, "success"

    async def _read_body(self, scope, receive) -> bytes:
        """The body, at most ``max_body_bytes`` of it kept; BodyTooLarge once it is over (after
        reading the rest up to ``drain_limit_bytes`` and discarding it)."""
        declared, expects_continue = None, False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        over = declared is not None and declared > self.max_body_bytes
        if declared is not None and over and (expects_continue or declared > self.drain_limit_bytes):
            # Nothing sent yet (the client waits for 100 Continue), or too much to drain.
            raise BodyTooLarge(read=0, close=True)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.drain_limit_bytes:
                raise BodyTooLarge(read=size, close=True)
            if size > self.max_body_bytes:
                over, chunks = True, []
            elif not over:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if over:
            raise BodyTooLarge(read=size, close=False)
        return b"".join(chunks)

    def _refuse(self, status: int, reason: str, detail: str) -> tuple[int, str]:
        self.on_result(reason)
        log.warning("callback_rejected", reason=reason, status=status, detail=detail[:200])
        return status, detail

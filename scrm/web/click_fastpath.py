"""``GET``/``HEAD /t/{code}`` as a bare ASGI app in front of FastAPI.

The tracked-link redirect is the one page customers hit in bursts (a mass send reaches thousands
of phones at once). Through FastAPI it measured ~1,400 us of server CPU per redirect, ~900 us of
it FastAPI's routing, dependency solving and threadpool hop; this path answers a cache hit
itself: the link's URL from the recorder's in-process cache, the click's facts, one RPUSH, a 302.

It only takes the case it can answer exactly like the route (``scrm.web.app``'s
``tracked_link``): a code whose URL is cached and a Redis the recorder is not backing off from.
Everything else (an unknown or uncached code, whose lookup and Chinese 404/503 pages are the
route's; Redis in its back-off; other methods and paths) goes to FastAPI unchanged. When the
RPUSH itself fails the click is written to the database in a worker thread, as the route does.

The RPUSH runs inline on the event loop: on loopback it costs tens of microseconds, less than a
hop to the threadpool; its client has a 0.5 s timeout and no retries, and after a failure the
recorder sends clicks to the route (database writes in the threadpool) for its back-off period,
so a Redis that hangs stalls the loop for at most one timeout per back-off period.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qsl, quote

import anyio.to_thread

from scrm.clicks.recording import PREFETCH_HEADERS, ClickRecorder
from scrm.sop.links import MAX_CODE_CHARS

_PREFIX = "/t/"
_PREFETCH = frozenset(h.encode("ascii") for h in PREFETCH_HEADERS)
_EMPTY = (b"content-length", b"0")


@lru_cache(maxsize=4096)
def _location(url: str) -> bytes:
    """The Location header value, quoted exactly as Starlette's RedirectResponse quotes it."""
    return quote(url, safe=":/%#?=@[]!$&'()*+,;").encode("latin-1")


class ClickFastPath:
    """ASGI app answering cached ``/t/{code}`` redirects itself and passing the rest to ``api``."""

    def __init__(self, api, clicks: ClickRecorder):
        self.api, self.clicks = api, clicks

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            if path.startswith(_PREFIX):
                code = path[3:]
                if code and len(code) <= MAX_CODE_CHARS and "/" not in code and self.clicks.queue_ready():
                    url = self.clicks.links.cached(code)
                    if url is not None:
                        await self._redirect(scope, send, code, url)
                        return
        await self.api(scope, receive, send)

    async def _redirect(self, scope, send, code: str, url: str) -> None:
        user_agent: str | None = None
        prefetch: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"user-agent":
                if user_agent is None:
                    user_agent = value.decode("latin-1")
            elif name in _PREFETCH:
                key = name.decode("ascii")
                if key not in prefetch:  # the first one, as Starlette's headers.get
                    prefetch[key] = value.decode("latin-1")
        prefetch = {k: v for k, v in prefetch.items() if v}
        token = None
        query = scope.get("query_string", b"")
        if query:  # as Starlette's query_params.get: blanks kept, the last value wins
            token = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("c")
        client = scope.get("client")
        record = self.clicks.queue(code, user_agent=user_agent, headers=prefetch, method=scope["method"],
                                   client_ip=client[0] if client else None, token=token)
        if record is not None:  # Redis failed just now: the database, off the event loop
            await anyio.to_thread.run_sync(self.clicks.write_directly, record)
        await send({"type": "http.response.start", "status": 302,
                    "headers": [_EMPTY, (b"location", _location(url))]})
        await send({"type": "http.response.body", "body": b""})

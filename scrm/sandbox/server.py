"""HTTP face of the sandbox: WeCom's ``/cgi-bin/`` API plus ``/sandbox/`` admin endpoints, and
``serve()`` to run it with uvicorn in a background thread."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from scrm.sandbox.state import SandboxError
from scrm.sandbox.users import ACTION_VALUE_KEYS, ACTIONS, ActionResult, Sandbox

OAUTH_STATE = re.compile(r"[A-Za-z0-9]{0,128}")  # WeCom: state is a-zA-Z0-9, at most 128 bytes
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def local_redirect_uri(url: str) -> bool:
    """Only ``http://127.0.0.1…`` / ``http://localhost…`` (any port, no user info) may receive the
    sandbox's OAuth redirect: the sandbox must not become an open redirector."""
    if not url or any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS and "@" not in parts.netloc)


def create_sandbox_app(sandbox: Sandbox) -> FastAPI:
    app = FastAPI(title="scrm WeCom sandbox", docs_url="/sandbox/docs", openapi_url="/sandbox/openapi.json")
    app.state.sandbox = sandbox

    # -- WeCom API ----------------------------------------------------------------------------
    @app.api_route("/cgi-bin/{path:path}", methods=["GET", "POST"])
    async def cgi_bin(path: str, request: Request) -> JSONResponse:
        body: Any = None
        if request.method == "POST":
            raw = await request.body()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    return JSONResponse({"errcode": 47001, "errmsg": "data format error"})
            else:
                body = {}
        out = sandbox.handle(request.method, path, dict(request.query_params), body)
        # WeCom answers API errors with HTTP 200 and an errcode.
        return JSONResponse(out)

    # -- admin / test endpoints ---------------------------------------------------------------
    def _err(exc: SandboxError) -> JSONResponse:
        return JSONResponse({"errcode": exc.errcode, "errmsg": exc.errmsg}, status_code=400)

    @app.get("/sandbox/state")
    def state() -> dict:
        return sandbox.snapshot()

    @app.get("/sandbox/actions")
    def actions() -> dict:
        return {"actions": list(ACTIONS)}

    @app.post("/sandbox/actions/{name}")
    def action(name: str, kwargs: dict[str, Any] | None = None) -> JSONResponse:
        if name not in ACTIONS:
            return JSONResponse({"errcode": 404, "errmsg": f"unknown action {name}", "actions": list(ACTIONS)},
                                status_code=404)
        try:
            result = getattr(sandbox, name)(**(kwargs or {}))
        except SandboxError as exc:
            return _err(exc)
        except TypeError as exc:
            return JSONResponse({"errcode": 40058, "errmsg": str(exc)}, status_code=400)
        if isinstance(result, ActionResult):
            return JSONResponse(result.as_dict())
        return JSONResponse({ACTION_VALUE_KEYS.get(name, "result"): result})

    @app.get("/sandbox/callbacks")
    def callbacks() -> dict:
        return {"hold": sandbox.poster.hold, "queued": len(sandbox.poster.queue),
                "callbacks": [d.as_dict() for d in sandbox.callbacks]}

    @app.post("/sandbox/callbacks/hold")
    def hold(body: dict[str, Any] | None = None) -> dict:
        sandbox.hold_callbacks(bool((body or {}).get("hold", True)))
        return {"hold": sandbox.poster.hold}

    @app.post("/sandbox/callbacks/flush")
    def flush() -> dict:
        return {"delivered": [d.as_dict() for d in sandbox.flush_callbacks()]}

    @app.post("/sandbox/callbacks/redeliver")
    def redeliver(body: dict[str, Any] | None = None) -> JSONResponse:
        try:
            d = sandbox.redeliver(int((body or {}).get("index", -1)))
        except IndexError:
            return JSONResponse({"errcode": 404, "errmsg": "no such callback"}, status_code=404)
        return JSONResponse(d.as_dict())

    @app.post("/sandbox/callbacks/twice")
    def twice(body: dict[str, Any] | None = None) -> dict:
        sandbox.deliver_twice = bool((body or {}).get("twice", True))
        return {"twice": sandbox.deliver_twice}

    @app.get("/sandbox/welcome_messages")
    def welcome_messages() -> dict:
        return {"welcome_messages": list(sandbox.welcome_messages)}

    @app.get("/sandbox/app_messages")
    def app_messages(touser: str | None = None) -> dict:
        return {"app_messages": [m for m in sandbox.app_messages if touser is None or m["touser"] == touser]}

    @app.get("/sandbox/oauth/authorize")
    def oauth_authorize(request: Request):
        """Mimics open.weixin.qq.com/connect/oauth2/authorize for a browser: ``userid`` (a member),
        or ``external_userid`` / ``visitor=1`` (a non-member), is "logged in" and sent to
        ``redirect_uri?code=CODE&state=STATE`` with a one-time code for auth/getuserinfo. Without
        any of them the page lists the members to choose from (the WeCom client knows who you are;
        a browser has to say). WeCom's own parameters (appid, agentid, scope…) are accepted."""
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        state = q.get("state", "")
        if not local_redirect_uri(redirect_uri):
            return JSONResponse({"errcode": 40058, "errmsg": "redirect_uri must be http://127.0.0.1… or "
                                 "http://localhost…"}, status_code=400)
        if not OAUTH_STATE.fullmatch(state):
            return JSONResponse({"errcode": 40058, "errmsg": "state must be a-zA-Z0-9, at most 128 bytes"},
                                status_code=400)
        if q.get("appid") and q["appid"] != sandbox.corp_id:
            return JSONResponse({"errcode": 40013, "errmsg": "invalid corpid (appid)"}, status_code=400)
        if q.get("agentid") and sandbox.agent_id is not None and q["agentid"] != str(sandbox.agent_id):
            return JSONResponse({"errcode": 40056, "errmsg": "invalid agentid"}, status_code=400)
        if not (q.get("userid") or q.get("external_userid") or q.get("visitor")):
            keep = [(k, v) for k, v in q.multi_items() if k not in ("userid", "external_userid", "visitor")]
            links = "".join(
                f"<li><a href='?{html.escape(urlencode(keep + [('userid', m.userid)]))}'>"
                f"{html.escape(m.name)} ({html.escape(m.userid)})</a></li>"
                for m in list(sandbox.members.values()))
            visitor = html.escape(urlencode(keep + [("visitor", "1")]))
            return HTMLResponse(f"<html><body><h1>Sandbox WeCom login</h1><p>Sign in to "
                                f"{html.escape(redirect_uri)} as:</p><ul>{links}</ul>"
                                f"<p><a href='?{visitor}'>a WeChat user who is not a member</a></p></body></html>")
        try:
            if q.get("userid"):
                code = sandbox.oauth_code(q["userid"])
            else:
                code = sandbox.oauth_code(external_userid=q.get("external_userid") or None)
        except SandboxError as exc:
            return _err(exc)
        parts = urlsplit(redirect_uri)
        query = urlencode({"code": code, "state": state})
        target = urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))
        return RedirectResponse(target, status_code=302)

    @app.post("/sandbox/tokens/expire")
    def expire_tokens() -> dict:
        sandbox.expire_tokens()
        return {"expired": True}

    @app.post("/sandbox/faults")
    def faults(body: dict[str, Any]) -> dict:
        sandbox.inject_fault(str(body["path"]), int(body["errcode"]), int(body.get("times", 1)))
        return {"faults": sandbox.faults}

    @app.post("/sandbox/seed")
    def seed() -> dict:
        from scrm.sandbox.seed import seed_demo

        return seed_demo(sandbox)

    @app.get("/sandbox/qr/{config_id}", response_class=HTMLResponse)
    def qr(config_id: str) -> str:
        kind = "contact_way" if config_id in sandbox.contact_ways else "join_way" if config_id in sandbox.join_ways else None
        if kind is None:
            return HTMLResponse("<h1>unknown QR code</h1>", status_code=404)
        action = "scan_contact_way" if kind == "contact_way" else "join_group_via_way"
        return (f"<html><body><h1>Sandbox QR ({kind})</h1><p>config_id {config_id}</p>"
                f"<form method='post' action='/sandbox/qr/{config_id}/scan'><button>Scan as a new customer</button>"
                f"</form><p>or POST /sandbox/actions/{action} {{\"config_id\": \"{config_id}\"}}</p></body></html>")

    @app.post("/sandbox/qr/{config_id}/scan")
    def scan(config_id: str) -> JSONResponse:
        try:
            if config_id in sandbox.join_ways:
                result = sandbox.join_group_via_way(config_id)
            else:
                result = sandbox.scan_contact_way(config_id)
        except SandboxError as exc:
            return _err(exc)
        return JSONResponse(result.as_dict())

    return app


@dataclass
class SandboxServer:
    """A running sandbox: ``base_url`` (http://host:port), ``api_base_url`` (…/cgi-bin/), ``stop()``."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def api_base_url(self) -> str:
        return self.base_url + "/cgi-bin/"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "SandboxServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8899, *, log_level: str = "warning",
          startup_timeout: float = 10.0) -> SandboxServer:
    """Run the sandbox app with uvicorn in a daemon thread; ``port=0`` picks a free port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    base = f"http://{host}:{port}"
    if "/sandbox/qr/" in sandbox.qr_base_url and sandbox.qr_base_url.startswith("http://127.0.0.1:8899"):
        sandbox.qr_base_url = base + "/sandbox/qr/"
    config = uvicorn.Config(create_sandbox_app(sandbox), log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="scrm-sandbox", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"sandbox server did not start on {base}")
        time.sleep(0.02)
    return SandboxServer(base, server, thread)

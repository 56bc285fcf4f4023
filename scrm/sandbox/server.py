"""HTTP face of the sandbox: WeCom's ``/cgi-bin/`` API plus ``/sandbox/`` admin endpoints, and
``serve()`` to run it with uvicorn in a background thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from scrm.sandbox.state import SandboxError
from scrm.sandbox.users import ACTIONS, Sandbox


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
        return JSONResponse(result.as_dict())

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

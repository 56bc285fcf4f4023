"""HTTP face of the sandbox: WeCom's ``/cgi-bin/`` API plus ``/sandbox/`` admin endpoints, and
``serve()`` to run it with uvicorn in a background thread."""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi_offline import FastAPIOffline

from scrm.sandbox.qr import qr_png
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


PAGE_STYLE = (
    "body{font-family:-apple-system,'PingFang SC','Noto Sans CJK SC','Microsoft YaHei',sans-serif;margin:0 auto;"
    "max-width:32rem;padding:1rem;line-height:1.5;color:#222}"
    "h1{font-size:1.3rem}ul{list-style:none;padding:0}li{margin:.4rem 0}"
    "a.pick,button{display:block;width:100%;box-sizing:border-box;padding:.8rem;border:1px solid #07c160;"
    "border-radius:.5rem;text-align:center;text-decoration:none;font-size:1rem;color:#07c160;background:#fff}"
    "button{background:#07c160;color:#fff}img{display:block;max-width:100%;height:auto;margin:0 auto}"
    "input{width:100%;box-sizing:border-box;padding:.6rem;margin:.4rem 0;font-size:1rem}"
    ".note{color:#888;font-size:.85rem;word-break:break-all}"
)


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """A page a demo user sees (on a phone, too): Chinese, mobile viewport. ``title`` is escaped
    here; ``body`` must already be escaped HTML."""
    return HTMLResponse(
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>", status_code=status_code)


def wants_html(request: Request) -> bool:
    """A browser (form post, link) rather than an API client."""
    return "text/html" in request.headers.get("accept", "")


def create_sandbox_app(sandbox: Sandbox, *, latency_ms: int = 0) -> FastAPI:
    """``latency_ms``: every /cgi-bin/ call is answered that much later (WeCom's round trip,
    simulated; the wait does not hold the event loop, so calls overlap as they would in WeCom)."""
    # FastAPIOffline serves Swagger UI's JS/CSS itself: no page of the sandbox needs the internet.
    app = FastAPIOffline(title="scrm WeCom sandbox", docs_url="/sandbox/docs", redoc_url="/sandbox/redoc",
                         openapi_url="/sandbox/openapi.json", static_url="/sandbox/static-offline-docs",
                         swagger_ui_oauth2_redirect_url="/sandbox/docs/oauth2-redirect",
                         swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io
    app.state.sandbox = sandbox

    def who(userid: str) -> str:
        """名字 (userid), escaped."""
        m = sandbox.members.get(userid)
        return html.escape(f"{m.name} ({userid})" if m else userid)

    # -- WeCom API ----------------------------------------------------------------------------
    latency = max(0, latency_ms) / 1000

    async def cgi_bin(path: str, request: Request) -> JSONResponse:
        """Documents /cgi-bin/ in the OpenAPI page; CgiBinFastPath answers the calls first."""
        raw = await request.body() if request.method == "POST" else None
        return JSONResponse(cgi_answer(sandbox, request.method, path, dict(request.query_params), raw))

    for method in ("GET", "POST"):  # one operation each, so the OpenAPI document has unique ids
        app.add_api_route("/cgi-bin/{path:path}", cgi_bin, methods=[method], operation_id=f"cgi_bin_{method.lower()}",
                          summary=f"WeCom API ({method})")
    # The routes above document /cgi-bin/ (OpenAPI); calls are answered by CgiBinFastPath, below.
    app.add_middleware(CgiBinFastPath, sandbox=sandbox, latency=latency)

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
                f"<li><a class='pick' href='?{html.escape(urlencode(keep + [('userid', m.userid)]))}'>"
                f"{html.escape(m.name)} ({html.escape(m.userid)})</a></li>"
                for m in list(sandbox.members.values()))
            visitor = html.escape(urlencode(keep + [("visitor", "1")]))
            return page("企业微信登录（沙箱）",
                        f"<p>以下面的身份登录 <span class='note'>{html.escape(redirect_uri)}</span>：</p>"
                        f"<ul>{links}</ul>"
                        f"<p><a class='pick' href='?{visitor}'>不是企业成员的微信用户</a></p>"
                        "<p class='note'>这是本地沙箱：在企业微信里打开时，"
                        "企业微信已经知道你是谁，不会出现这一页。</p>")
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

    @app.get("/sandbox/sso/login")
    def sso_login(request: Request):
        """Mimics WeCom's web login (login.work.weixin.qq.com/wwlogin/sso/login, 扫码登录) for a
        desktop browser: where WeCom shows a QR code to scan with the WeCom app, the sandbox lists
        the corp's members to "scan as"; ``userid`` picks one and the browser goes to
        ``redirect_uri?code=CODE&state=STATE`` with a one-time code for auth/getuserinfo. Only
        members can scan: there is no visitor here. ``login_type`` must be CorpApp (an app of the
        corp; ServiceApp logins are for third-party apps, which the sandbox does not model)."""
        q = request.query_params
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        refusal = None
        if q.get("login_type", "CorpApp") != "CorpApp":
            refusal = (40058, "login_type must be CorpApp")
        elif not local_redirect_uri(redirect_uri):
            refusal = (40058, "redirect_uri must be http://127.0.0.1… or http://localhost…")
        elif not OAUTH_STATE.fullmatch(state):
            refusal = (40058, "state must be a-zA-Z0-9, at most 128 bytes")
        elif q.get("appid") != sandbox.corp_id:
            refusal = (40013, "invalid corpid (appid)")
        elif sandbox.agent_id is not None and q.get("agentid") != str(sandbox.agent_id):
            refusal = (40056, "invalid agentid")
        if refusal is not None:
            if wants_html(request):
                return page("企业微信登录失败（沙箱）", f"<p>参数错误：{html.escape(refusal[1])}</p>", status_code=400)
            return JSONResponse({"errcode": refusal[0], "errmsg": refusal[1]}, status_code=400)
        if not q.get("userid"):
            keep = [(k, v) for k, v in q.multi_items() if k != "userid"]
            links = "".join(
                f"<li><a class='pick' href='?{html.escape(urlencode(keep + [('userid', m.userid)]))}'>"
                f"以 {html.escape(m.name or m.userid)} ({html.escape(m.userid)}) 扫码</a></li>"
                for m in list(sandbox.members.values()))
            return page("企业微信扫码登录（沙箱）",
                        f"<p>登录到 <span class='note'>{html.escape(redirect_uri)}</span>。"
                        "真实的企业微信在这里显示二维码，用手机上的企业微信扫码确认；沙箱里请选择扫码的成员：</p>"
                        f"<ul>{links}</ul>")
        try:
            code = sandbox.oauth_code(q["userid"])
        except SandboxError as exc:
            return _err(exc)
        parts = urlsplit(redirect_uri)
        query = urlencode({"code": code, "state": state})
        return RedirectResponse(urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query)),
                                status_code=302)

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

    def qr_kind(config_id: str) -> str | None:
        if config_id in sandbox.contact_ways:
            return "contact_way"
        if config_id in sandbox.join_ways:
            return "join_way"
        return None

    def unknown_qr(request: Request) -> Response:
        if wants_html(request):
            return page("二维码不存在", "<p>这个二维码已删除或从未创建。</p>", status_code=404)
        return JSONResponse({"errcode": 41044, "errmsg": "invalid config_id"}, status_code=404)

    # The qr_code URL of contact ways and join ways: an image, as WeCom's are. It encodes the scan
    # page's URL (declared first: "{config_id}.png" would also match the page's route).
    @app.get("/sandbox/qr/{config_id}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {}})
    def qr_image(config_id: str, request: Request) -> Response:
        if qr_kind(config_id) is None:
            return unknown_qr(request)
        return Response(qr_png(sandbox.scan_page_url(config_id)), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    # What scanning the QR code opens: a person presses the button to act as a new customer.
    @app.get("/sandbox/qr/{config_id}", response_class=HTMLResponse)
    def scan_page(config_id: str, request: Request) -> Response:
        kind = qr_kind(config_id)
        if kind is None:
            return unknown_qr(request)
        cid = html.escape(config_id)
        if kind == "contact_way":
            contact_way = sandbox.contact_ways[config_id]
            title, action, remark_text = "「联系我」二维码（沙箱）", "scan_contact_way", contact_way.remark
            who_line = "扫码后添加为好友的成员：" + "、".join(who(u) for u in contact_way.user)
        else:
            join_way = sandbox.join_ways[config_id]
            title, action, remark_text = "「加入群聊」二维码（沙箱）", "join_group_via_way", join_way.remark
            names = [sandbox.groups[c].name for c in join_way.chat_id_list if c in sandbox.groups]
            who_line = "扫码后加入的群：" + "、".join(html.escape(n) for n in names)
        remark = f"<p>{html.escape(remark_text)}</p>" if remark_text else ""
        api_hint = html.escape(f'POST /sandbox/actions/{action} {{"config_id": "{config_id}"}}')
        return page(title,
                    f"<img src='{cid}.png' alt='二维码' width='240' height='240'>{remark}<p>{who_line}</p>"
                    f"<form method='post' action='/sandbox/qr/{cid}/scan'>"
                    "<input name='name' placeholder='顾客的微信名（可不填）' maxlength='30'>"
                    "<button>扫码（以新顾客身份）</button></form>"
                    f"<p class='note'>config_id {cid}；接口方式：{api_hint}</p>")

    @app.post("/sandbox/qr/{config_id}/scan")
    async def scan(config_id: str, request: Request) -> Response:
        """The scan itself: a new customer scans the QR code (JSON for API clients, a page for the
        scan page's form)."""
        kind = qr_kind(config_id)
        if kind is None:
            return unknown_qr(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("name") or [""])[0].strip()[:30] or "微信用户"
        try:
            if kind == "join_way":
                result = sandbox.join_group_via_way(config_id, name=name)
            else:
                result = sandbox.scan_contact_way(config_id, name=name)
        except SandboxError as exc:
            if wants_html(request):
                return page("扫码失败", f"<p>{html.escape(exc.errmsg)}（{exc.errcode}）</p>", status_code=400)
            return _err(exc)
        if not wants_html(request):
            return JSONResponse(result.as_dict())
        if kind == "join_way":
            group = sandbox.groups[result["chat_id"]]
            done = f"新顾客 {html.escape(name)} 加入了群「{html.escape(group.name)}」。"
        else:
            done = f"新顾客 {html.escape(name)} 添加了 {who(result['userid'])} 为好友。"
        sent = "回调已送达 scrm。" if result.delivered else "回调未送达（scrm 没有运行或回调地址不对）。"
        return page("扫码成功", f"<p>{done}</p><p class='note'>{sent}</p>"
                                f"<p><a class='pick' href='/sandbox/qr/{html.escape(config_id)}'>再扫一次</a></p>")

    return app


_JSON_HEADERS = [(b"content-type", b"application/json")]


def cgi_answer(sandbox: Sandbox, method: str, path: str, query: dict[str, str], raw: bytes | None) -> dict:
    """One /cgi-bin/ call's answer, as WeCom gives it: HTTP 200 with an errcode; a POST body that is
    not JSON is 47001, an empty one is ``{}``; GET has no body (``raw`` None)."""
    body: Any = None
    if raw is not None:
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return {"errcode": 47001, "errmsg": "data format error"}
        else:
            body = {}
    return sandbox.handle(method, path, query, body)


class CgiBinFastPath:
    """The /cgi-bin/ API answered straight from ASGI, before FastAPI's routing and request objects:
    the same answers as the ``cgi_bin`` route (:func:`cgi_answer`; query parameters, last value
    wins), at a fraction of the CPU. A bench runs the sandbox on
    the same cores as the workers it measures, so the double's own cost must stay small."""

    def __init__(self, app, *, sandbox: Sandbox, latency: float):
        self.app, self.sandbox, self.latency = app, sandbox, latency

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or not scope["path"].startswith("/cgi-bin/")
                or scope["method"] not in ("GET", "POST")):
            await self.app(scope, receive, send)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        method = scope["method"]
        raw: bytes | None = None
        if method == "POST":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            raw = b"".join(chunks)
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        out = cgi_answer(self.sandbox, method, scope["path"][len("/cgi-bin/"):], query, raw)
        payload = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


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

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8899, *, log_level: str = "warning",
          startup_timeout: float = 10.0, latency_ms: int = 0) -> SandboxServer:
    """Run the sandbox app with uvicorn in a daemon thread; ``port=0`` picks a free port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    base = f"http://{host}:{port}"
    if "/sandbox/qr/" in sandbox.qr_base_url and sandbox.qr_base_url.startswith("http://127.0.0.1:8899"):
        sandbox.qr_base_url = base + "/sandbox/qr/"
    # Idle connections are kept longer than httpx keeps them (5 s), so a client never reuses one the
    # server is closing at that moment (a "connection reset" that would fail the call for nothing).
    config = uvicorn.Config(create_sandbox_app(sandbox, latency_ms=latency_ms), log_level=log_level, lifespan="off",
                            timeout_keep_alive=30)
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

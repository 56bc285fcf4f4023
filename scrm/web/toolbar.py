"""The group owner's chat toolbar page (聊天工具栏): today's SOP posts for the group in view, and a
Send button that claims a due post, puts it into the chat, and confirms it.

This module is the thin web side: who is asking (the session), the request's shape, and the page.
What may change in the ledger, and when, is :mod:`scrm.sop.owner_posts` (claim before send,
confirm or release after, lapsed claims reported as unconfirmed); its refusals carry a Chinese
message and a kind that becomes the HTTP status here.

Identity comes from WeCom's OAuth2 (code -> auth/getuserinfo -> userid) and lives in a signed
cookie; a userid sent by the page itself is never trusted. A failed sign-in is a Chinese page that
tells an expired or used code ("open it again from the group's toolbar") from a visitor who is not
a corp member ("members only").

Inside WeCom the page uses the JS-SDK (wx.agentConfig, getContext, then getCurExternalChat in a
group chat or getCurExternalContact in a 1:1 chat, and sendChatMessage). In a 1:1 chat it shows
that customer's journey messages (scrm.journeys) and sends them the same way: claim, send, confirm.
Sends are simulated only on the sandbox corp (``ToolbarConfig.sandbox``), where the page offers the
owner's groups and the customers with a 1:1 message today as the chats to simulate; on a real corp, outside
WeCom or when the JS-SDK is not there, the page only shows the posts and says where to open it,
and the server refuses claims from outside the WeCom client too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.engine import Engine

from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.sop import owner_posts
from scrm.sop.owner_posts import OwnerPostError, Partial
from scrm.sop.template import SopTemplate
from scrm.web.templating import templates
from scrm.wecom.api import ToolbarAPI
from scrm.wecom.client import NotAMember
from scrm.wecom.errors import WeComAPIError

log = get_logger(__name__)
COOKIE = "scrm_owner"
SESSION_SECONDS = 12 * 3600
HTTP_STATUS = {"not_found": 404, "forbidden": 403, "conflict": 409, "bad_request": 400}


@dataclass
class ToolbarConfig:
    engine: Engine
    client: ToolbarAPI
    corp_id: str
    agent_id: int
    secret: str  # signs the session cookie
    base_url: str  # how WeCom reaches scrm, e.g. https://scrm.example.com
    authorize_url: str
    tz: dt.tzinfo
    templates: Callable[[], dict[str, SopTemplate]]
    clock: Callable[[], dt.datetime] = utcnow
    # The configured corp is the sandbox (settings.wecom.is_sandbox): the only corp whose sends
    # may be simulated. Explicit, so a real corp never simulates by default.
    sandbox: bool = False
    lease: dt.timedelta = owner_posts.LEASE
    # The journeys on disk by id (scrm.journeys.jobs.journeys_loader): 1:1 messages on the page.
    journeys: Callable[[], Mapping[str, Any]] | None = None


def in_wecom(request: Request) -> bool:
    """The WeCom client's web view says ``wxwork`` in its user agent."""
    return "wxwork" in request.headers.get("user-agent", "").lower()


def session_secret(web_secret: str, corp_secret: str) -> str:
    """The configured secret, else one derived from the corp secret (never the secret itself)."""
    if web_secret:
        return web_secret
    if not corp_secret:
        raise ValueError("set SCRM_WEB__SESSION_SECRET (or the corp secret) to sign toolbar sessions")
    return hmac.new(corp_secret.encode(), b"scrm toolbar session", hashlib.sha256).hexdigest()


def toolbar_router(cfg: ToolbarConfig) -> APIRouter:
    router = APIRouter()
    signer = URLSafeTimedSerializer(cfg.secret, salt="scrm-toolbar")

    def owner_of(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            return signer.loads(token, max_age=SESSION_SECONDS)
        except BadSignature:
            return None

    def require_owner(request: Request) -> str:
        owner = owner_of(request)
        if owner is None:
            raise HTTPException(401, "未登录或登录已过期：请从企业微信的客户群工具栏重新打开")
        return owner

    @router.get("/toolbar", response_class=HTMLResponse)
    def page(request: Request, code: str = Query(""), state: str = Query("")):
        if code:
            try:
                userid = cfg.client.get_user_by_code(code)
            except NotAMember:
                log.warning("toolbar_login_not_a_member")
                return login_refused(request, "这个页面只对企业成员（群主）开放",
                                     "你登录的微信不是本企业的成员，所以看不到群主的待发内容。")
            except WeComAPIError as exc:
                log.warning("toolbar_login_failed", errcode=exc.errcode)
                return login_refused(request, "登录已过期或失败",
                                     "请从企业微信的客户群工具栏重新打开这个页面。")
            response = RedirectResponse("/toolbar", status_code=302)
            response.set_cookie(COOKIE, signer.dumps(userid), max_age=SESSION_SECONDS, httponly=True,
                                samesite="lax", secure=cfg.base_url.startswith("https://"))
            log.info("toolbar_login", userid=userid)
            return response
        owner = owner_of(request)
        if owner is None:
            query = urlencode({"appid": cfg.corp_id, "redirect_uri": f"{cfg.base_url}/toolbar",
                               "response_type": "code", "scope": "snsapi_base", "state": "toolbar",
                               "agentid": cfg.agent_id})
            return RedirectResponse(f"{cfg.authorize_url}?{query}#wechat_redirect", status_code=302)
        return templates.TemplateResponse(request, "toolbar.html", {
            "owner": owner, "owner_name": owner_posts.owner_name(cfg.engine, owner),
            "in_wecom": in_wecom(request), "sandbox": cfg.sandbox,
            "corp_id": cfg.corp_id, "agent_id": cfg.agent_id})

    def login_refused(request: Request, heading: str, line: str) -> HTMLResponse:
        return templates.TemplateResponse(request, "notice.html", {
            "title": "无法打开群 SOP 页面", "heading": heading, "lines": [line], "show_locate": False,
        }, status_code=403)

    def refused(exc: OwnerPostError) -> HTTPException:
        return HTTPException(HTTP_STATUS.get(exc.kind, 409), exc.message)

    async def body_of(request: Request) -> dict:
        """The page's JSON body; only the page's own fetch sends X-Requested-With (a cross-site
        form cannot)."""
        if request.headers.get("x-requested-with") != "scrm-toolbar":
            raise HTTPException(400, "请求不完整，请刷新页面后重试")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "请求不完整，请刷新页面后重试") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "请求不完整，请刷新页面后重试")
        return body

    @router.get("/toolbar/api/posts")
    def posts(request: Request):
        """The owner's groups and today's posts for them, each with the content to send."""
        owner = require_owner(request)
        day = owner_posts.day_posts(cfg.engine, owner, now=cfg.clock(), tz=cfg.tz, templates=cfg.templates,
                                    link_base=cfg.base_url, journeys=cfg.journeys)
        return {"owner": owner, "day": day.day.isoformat(), "groups": day.groups, "customers": day.customers,
                "posts": [dataclasses.asdict(p) for p in day.posts]}

    @router.post("/toolbar/api/posts/{post_id}/claim")
    async def claim(request: Request, post_id: int):
        """Take a due post for this owner and chat before the page sends it; answers the content to send."""
        owner = require_owner(request)
        chat_id = (await body_of(request)).get("chat_id")
        if not isinstance(chat_id, str) or not chat_id:
            raise HTTPException(400, "请求不完整（没有群），请刷新页面后重试")
        try:
            c = owner_posts.claim(cfg.engine, post_id, owner, chat_id, now=cfg.clock(), lease=cfg.lease,
                                  from_wecom=in_wecom(request), sandbox=cfg.sandbox)
        except OwnerPostError as exc:
            raise refused(exc) from None
        return {"status": "sending", "content": c.content, "messages": c.messages,
                "lease_until": c.lease_until.isoformat()}

    @router.post("/toolbar/api/posts/{post_id}/confirm")
    async def confirm(request: Request, post_id: int):
        """WeCom sent the claimed post (or the owner says a lapsed claim went): record it sent."""
        owner = require_owner(request)
        raw = (await body_of(request)).get("partial")
        partial = None
        if raw is not None:
            try:
                partial = Partial(sent=int(raw["sent"]), total=int(raw["total"]), missing=list(raw["missing"]))
            except (TypeError, KeyError, ValueError):
                raise HTTPException(400, "发送结果不完整，请刷新页面后确认是否已发到群里") from None
        try:
            out = owner_posts.confirm(cfg.engine, post_id, owner, now=cfg.clock(), partial=partial)
        except OwnerPostError as exc:
            raise refused(exc) from None
        return {"status": out.status, "changed": out.changed, "sent_by": out.sent_by}

    @router.post("/toolbar/api/posts/{post_id}/release")
    async def release(request: Request, post_id: int):
        """Nothing of the claimed post reached the chat: back to 待发送 (or expired after its window)."""
        owner = require_owner(request)
        reason = (await body_of(request)).get("reason")
        try:
            out = owner_posts.release(cfg.engine, post_id, owner, now=cfg.clock(), reason=str(reason))
        except OwnerPostError as exc:
            raise refused(exc) from None
        return {"status": out.status, "changed": out.changed}

    @router.get("/toolbar/api/agent-config")
    def agent_config(request: Request, url: str = Query(..., max_length=2000)):
        """The signature the page needs for wx.agentConfig (app jsapi ticket, reference 3.8a)."""
        require_owner(request)
        if not url.startswith(cfg.base_url + "/"):
            raise HTTPException(400, "页面地址不对，请从企业微信的客户群工具栏重新打开")
        try:
            ticket = cfg.client.get_agent_ticket()["ticket"]
        except WeComAPIError as exc:
            log.warning("toolbar_agent_ticket_failed", errcode=exc.errcode)
            raise HTTPException(502, "企业微信暂时没有响应，请稍后从客户群的聊天工具栏重新打开") from None
        nonce, ts = secrets.token_hex(8), int(time.time())
        return JSONResponse({"corpid": cfg.corp_id, "agentid": cfg.agent_id, "timestamp": ts, "nonceStr": nonce,
                             "signature": cfg.client.jsapi_signature(ticket, nonce, ts, url)})

    return router

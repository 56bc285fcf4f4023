"""The group owner's chat toolbar page (聊天工具栏): today's SOP posts for the group in view, and a
Send button that puts a due post into the chat and records it as sent by that owner.

Identity comes from WeCom's OAuth2 (code -> auth/getuserinfo -> userid) and lives in a signed
cookie; a userid sent by the page itself is never trusted. Only the owner a post is planned for
can mark it sent, and only once: the ledger update is conditional on ``status = 'due'``, so a
second press, or two presses at once, change nothing.

A failed sign-in is a Chinese page that tells an expired or used code ("open it again from the
group's toolbar") from a visitor who is not a corp member ("members only"); every error the page
can show the owner (the JSON ``detail``) is Chinese too.

Inside WeCom the page uses the JS-SDK (wx.agentConfig, getCurExternalChat, sendChatMessage).
Outside WeCom (a desktop browser, the sandbox, tests) the group is picked from a list and the send
is simulated, so the same page can be driven by a headless browser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from scrm.contacts.models import Employee
from scrm.db import utcnow
from scrm.groups.models import CustomerGroup
from scrm.logs import get_logger
from scrm.sop.models import SopPost
from scrm.sop.sender import render_post, track_links
from scrm.sop.template import Channel, SopTemplate
from scrm.stores.models import Store
from scrm.web.templating import templates
from scrm.wecom.client import NotAMember
from scrm.wecom.errors import WeComAPIError

log = get_logger(__name__)
COOKIE = "scrm_owner"
SESSION_SECONDS = 12 * 3600
STATUS_TEXT = {
    "planned": "未到时间", "due": "待发送", "sending": "群发提交中", "sent": "已发送", "confirmed": "已送达",
    "failed": "失败", "expired": "已过期", "over_quota": "群发额度已用完",
}


@dataclass
class ToolbarConfig:
    engine: Engine
    client: object  # WeComClient: get_user_by_code, get_agent_ticket, jsapi_signature
    corp_id: str
    agent_id: int
    secret: str  # signs the session cookie
    base_url: str  # how WeCom reaches scrm, e.g. https://scrm.example.com
    authorize_url: str
    tz: dt.tzinfo
    templates: Callable[[], dict[str, SopTemplate]]
    clock: Callable[[], dt.datetime] = utcnow


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
        in_wecom = "wxwork" in request.headers.get("user-agent", "").lower()
        with cfg.engine.connect() as conn:
            name = conn.execute(select(Employee.__table__.c.name).where(Employee.__table__.c.userid == owner)).scalar()
        return templates.TemplateResponse(request, "toolbar.html", {
            "owner": owner, "owner_name": name or owner, "in_wecom": in_wecom,
            "corp_id": cfg.corp_id, "agent_id": cfg.agent_id})

    def login_refused(request: Request, heading: str, line: str) -> HTMLResponse:
        return templates.TemplateResponse(request, "notice.html", {
            "title": "无法打开群 SOP 页面", "heading": heading, "lines": [line], "show_locate": False,
        }, status_code=403)

    @router.get("/toolbar/api/posts")
    def posts(request: Request):
        """The owner's groups and today's posts for them, each with the content to send."""
        owner = require_owner(request)
        now = cfg.clock()
        today = now.astimezone(cfg.tz).date()
        g, c = CustomerGroup.__table__.c, SopPost.__table__.c
        with cfg.engine.connect() as conn:
            groups = conn.execute(select(CustomerGroup.__table__).where(g.owner_userid == owner, g.status == "active")
                                  .order_by(g.name, g.chat_id)).all()
            chats = [r.chat_id for r in groups]
            rows = conn.execute(select(SopPost.__table__).where(c.day == today, c.chat_id.in_(chats))
                                .order_by(c.scheduled_for, c.id)).all() if chats else []
            codes = {r.store_code for r in groups if r.store_code}
            stores = {s.code: s for s in conn.execute(select(Store.__table__).where(Store.__table__.c.code.in_(codes)))}
        by_chat = {r.chat_id: r for r in groups}
        loaded = cfg.templates()
        out = []
        for p in rows:
            content, error = p.content, None
            if content is None:
                group = by_chat[p.chat_id]
                content, error = render_post(p, loaded, group, stores.get(group.store_code))
                if content is not None and p.status == "due":
                    # Fixed once shown, so what the owner sends is what the ledger records.
                    content = track_links(cfg.engine, p, content, cfg.base_url, now)
                    with cfg.engine.begin() as conn:
                        conn.execute(update(SopPost.__table__).where(c.id == p.id, c.content.is_(None))
                                     .values(content=content))
            out.append({
                "id": p.id, "chat_id": p.chat_id, "template_id": p.template_id,
                "name": loaded[p.template_id].name if p.template_id in loaded else p.template_id,
                "time": p.scheduled_for.astimezone(cfg.tz).strftime("%H:%M"), "channel": p.channel,
                "status": p.status, "status_text": STATUS_TEXT.get(p.status, p.status),
                "sent_by": p.sent_by, "content": content, "error": error,
                "sendable": p.status == "due" and p.sender == owner and content is not None,
            })
        return {"owner": owner, "day": today.isoformat(),
                "groups": [{"chat_id": r.chat_id, "name": r.name} for r in groups], "posts": out}

    @router.post("/toolbar/api/posts/{post_id}/sent")
    async def mark_sent(request: Request, post_id: int):
        owner = require_owner(request)
        if request.headers.get("x-requested-with") != "scrm-toolbar":
            raise HTTPException(400, "请求不完整，请刷新页面后重试")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "请求不完整（没有群），请刷新页面后重试")
        chat_id = str((body or {}).get("chat_id") or "")
        c = SopPost.__table__.c
        with cfg.engine.begin() as conn:
            post = conn.execute(select(SopPost.__table__).where(c.id == post_id)).first()
            if post is None:
                raise HTTPException(404, "这条内容不存在了，请刷新页面")
            owner_now = conn.execute(select(CustomerGroup.owner_userid).where(
                CustomerGroup.chat_id == post.chat_id)).scalar()
            if post.sender != owner or owner_now != owner:
                log.warning("toolbar_forbidden", userid=owner, post_id=post_id, chat_id=post.chat_id)
                raise HTTPException(403, "这条内容属于别的群主的群，不能由你发送")
            if chat_id != post.chat_id:
                raise HTTPException(409, "这条内容是另一个群的：请在那个群里打开工具栏发送")
            if post.channel == Channel.mass_send.value:
                raise HTTPException(409, "企业群发请在企业微信「群发助手」里确认，不在这里发送")
            now = cfg.clock()
            changed = conn.execute(
                update(SopPost.__table__).where(c.id == post_id, c.status == "due", c.sender == owner)
                .values(status="sent", sent_by=owner, sent_at=now, updated_at=now)
            ).rowcount
        if changed:
            log.info("toolbar_post_sent", userid=owner, post_id=post_id, chat_id=chat_id)
            return {"status": "sent", "changed": True}
        if post.status in ("sent", "confirmed"):
            return {"status": post.status, "changed": False, "sent_by": post.sent_by}
        raise HTTPException(409, f"这条内容现在是「{STATUS_TEXT.get(post.status, post.status)}」，不能发送")

    @router.get("/toolbar/api/agent-config")
    def agent_config(request: Request, url: str = Query(..., max_length=2000)):
        """The signature the page needs for wx.agentConfig (app jsapi ticket, reference 3.8a)."""
        require_owner(request)
        if not url.startswith(cfg.base_url + "/"):
            raise HTTPException(400, "页面地址不对，请从企业微信的客户群工具栏重新打开")
        ticket = cfg.client.get_agent_ticket()["ticket"]
        nonce, ts = secrets.token_hex(8), int(time.time())
        return JSONResponse({"corpid": cfg.corp_id, "agentid": cfg.agent_id, "timestamp": ts, "nonceStr": nonce,
                             "signature": cfg.client.jsapi_signature(ticket, nonce, ts, url)})

    return router

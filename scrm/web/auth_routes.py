"""Sign-in for the managers', operators' and clerks' pages, and what those pages use to check who
is asking.

Ways in (``GET /login``):

- 企业微信登录: inside the WeCom client (user agent ``wxwork``) straight to WeCom's OAuth2 page
  (``web.oauth_authorize_url``, snsapi_base); in a desktop browser WeCom's web login
  (``web.sso_login_url``, scan with the WeCom app). Both come back to ``/auth/wecom/callback`` with
  a ``code`` (-> ``auth/getuserinfo`` -> userid) and our ``state``. ``state`` is a random nonce also
  kept in a short-lived signed cookie of this browser (``scrm_login``), so a code an attacker started
  cannot sign a victim in (login CSRF); the cookie also carries ``next``.
- A local account (userid + password, ``scrm users add --ask-password``) for before WeCom is set up.
  After :data:`scrm.auth.throttle.LIMIT` wrong passwords for a userid in 15 minutes that userid is
  refused for the rest of the window (Redis counter in production, in-memory in tests).

The session is an itsdangerous-signed cookie (``scrm_session``: userid and a random nonce, httponly,
SameSite=Lax, Secure on https, ``web.session_max_age_hours``). Who the userid is, is read from the
database on every request (:func:`scrm.auth.service.principal_for`), so a revoked role or a disabled
user stops working at once.

For the other pages (the dashboard), all documented below and installed by :func:`install_auth`:

- ``current_principal(request) -> Principal | None``
- ``who: Annotated[Principal, Depends(require_page(Role.manager))]`` (Annotated keeps ruff's B008
  quiet, and a module-level alias can be shared by several routes):
  ``require_page(*roles)`` guards a page; not signed in -> 302 to ``/login?next=…``;
  signed in without one of the roles -> 403 Chinese page. No roles: anyone signed in.
- ``require_api(*roles)``: the same for JSON: 401 / 403 with a Chinese ``detail``.
- ``Principal.require_store(code)`` raising :class:`~scrm.auth.roles.Forbidden` in a route becomes a
  403 (a Chinese page, or JSON under ``/api/``).
- ``csrf_token(request)`` (also a Jinja global): put it in every form as ``<input type="hidden"
  name="csrf_token" value="{{ csrf_token(request) }}">`` or send it as the ``X-CSRF-Token`` header;
  ``Depends(check_csrf)`` on every POST refuses a request without it (403, Chinese). Forms must be
  ``application/x-www-form-urlencoded`` (the default) for the field to be read.
- ``auth_bar.html``: ``{% include "auth_bar.html" %}`` shows who is signed in and a 退出 button.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.engine import Engine

from scrm.auth import service
from scrm.auth.roles import ROLE_NAMES, Forbidden, Principal, Role
from scrm.auth.throttle import MemoryThrottle, Throttle
from scrm.logs import get_logger
from scrm.web.templating import templates
from scrm.web.toolbar import in_wecom
from scrm.wecom.client import NotAMember
from scrm.wecom.errors import TransportError, WeComAPIError

log = get_logger(__name__)

SESSION_COOKIE = "scrm_session"
LOGIN_COOKIE = "scrm_login"  # the OAuth/SSO round trip's nonce and next, 10 minutes
CSRF_COOKIE = "scrm_csrf"  # a signed-out visitor's CSRF secret (the local sign-in form)
LOGIN_SECONDS = 600
MAX_FORM_BYTES = 16 * 1024
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

CSRF_REFUSED = "页面已过期或请求来源不明（缺少安全校验码），请刷新页面后重试"
SIGN_IN_NEEDED = "未登录或登录已过期，请先登录"
NO_ROLE = "你的账号没有查看这个页面的权限"


class UserByCode(Protocol):
    """WeCom's ``auth/getuserinfo`` (:meth:`scrm.wecom.client.WeComClient.get_user_by_code`)."""

    def get_user_by_code(self, code: str) -> str: ...


@dataclass
class AuthConfig:
    engine: Engine
    secret: str  # signs sessions, the login state and CSRF tokens (see auth_secret)
    base_url: str  # how browsers and WeCom reach scrm, e.g. https://scrm.example.com
    session_max_age_seconds: int = 12 * 3600
    client: UserByCode | None = None  # None: WeCom not set up, local accounts only
    corp_id: str = ""
    agent_id: int = 0
    oauth_authorize_url: str = "https://open.weixin.qq.com/connect/oauth2/authorize"
    sso_login_url: str = "https://login.work.weixin.qq.com/wwlogin/sso/login"
    throttle: Throttle = field(default_factory=MemoryThrottle)
    home: str = "/"  # where a sign-in without ``next`` lands (production: /home, each person's own page)

    @property
    def secure(self) -> bool:
        return self.base_url.startswith("https://")


def auth_secret(web_secret: str, corp_secret: str) -> str:
    """The sessions' key: derived from the configured web secret, else from the corp secret, with a
    purpose label of its own (never either secret itself, and never the toolbar's key)."""
    base = web_secret or corp_secret
    if not base:
        raise ValueError("set SCRM_WEB__SESSION_SECRET (or the corp secret) to sign sign-in sessions")
    return hmac.new(base.encode(), b"scrm dashboard session", hashlib.sha256).hexdigest()


# -- errors the pages raise -----------------------------------------------------------------------
class SignInRequired(HTTPException):
    """Not signed in on a page: becomes a 302 to /login?next=… (with install_auth's handler)."""

    def __init__(self, next_url: str):
        super().__init__(401, SIGN_IN_NEEDED)
        self.next_url = next_url


class PageForbidden(HTTPException):
    """Signed in, but not allowed: a 403 Chinese page."""

    def __init__(self, detail: str = NO_ROLE):
        super().__init__(403, detail)


class CsrfRefused(HTTPException):
    def __init__(self):
        super().__init__(403, CSRF_REFUSED)


# -- the session ------------------------------------------------------------------------------------
def _config(request: Request) -> AuthConfig:
    cfg = getattr(request.app.state, "auth", None)
    if cfg is None:
        raise RuntimeError("sign-in is not installed on this app: call scrm.web.auth_routes.install_auth")
    return cfg


def _serializer(cfg: AuthConfig, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(cfg.secret, salt=f"scrm-{purpose}")


def _session(request: Request, cfg: AuthConfig) -> dict | None:
    """The signed session's payload ({"u": userid, "n": nonce}); None when absent, forged or expired."""
    cached = request.scope.get("scrm.session", False)
    if cached is not False:
        return cached
    token = request.cookies.get(SESSION_COOKIE)
    payload = None
    if token:
        try:
            data = _serializer(cfg, "session").loads(token, max_age=cfg.session_max_age_seconds)
            if isinstance(data, dict) and isinstance(data.get("u"), str) and isinstance(data.get("n"), str):
                payload = data
        except BadSignature:  # forged, or older than the session's max age (SignatureExpired)
            payload = None
    request.scope["scrm.session"] = payload
    return payload


def current_principal(request: Request) -> Principal | None:
    """Who is signed in on this request (their roles read from the database now), else None."""
    if "scrm.principal" in request.scope:
        return request.scope["scrm.principal"]
    cfg = _config(request)
    session = _session(request, cfg)
    principal = service.principal_for(cfg.engine, session["u"]) if session else None
    request.scope["scrm.principal"] = principal
    return principal


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def require_page(*roles: Role) -> Callable[[Request], Principal]:
    """Dependency for a page: the signed-in Principal having one of ``roles`` (any role when none
    are given). Not signed in: redirect to the sign-in page and back; else 403 page."""

    def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        if principal is None:
            raise SignInRequired(_here(request))
        if roles and not principal.has(*roles):
            log.info("page_refused", userid=principal.userid, path=request.url.path)
            raise PageForbidden()
        return principal

    return dependency


def require_api(*roles: Role) -> Callable[[Request], Principal]:
    """Dependency for a JSON API: like :func:`require_page` but 401/403 with a Chinese ``detail``."""

    def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        if principal is None:
            raise HTTPException(401, SIGN_IN_NEEDED)
        if roles and not principal.has(*roles):
            log.info("api_refused", userid=principal.userid, path=request.url.path)
            raise HTTPException(403, NO_ROLE)
        return principal

    return dependency


# -- CSRF ---------------------------------------------------------------------------------------------
def _mac(cfg: AuthConfig, *parts: str) -> str:
    return hmac.new(cfg.secret.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _signed_out_token(request: Request, cfg: AuthConfig) -> str:
    value = request.scope.get("scrm.csrf_cookie") or request.cookies.get(CSRF_COOKIE, "")
    return _mac(cfg, "csrf", "signed-out", value) if value else ""


def csrf_token(request: Request) -> str:
    """The token this visitor's forms must send: tied to the signed session (or, signed out, to
    the ``scrm_csrf`` cookie the sign-in page sets). '' when there is neither."""
    cfg = _config(request)
    session = _session(request, cfg)
    if session:
        return _mac(cfg, "csrf", "session", session["n"])
    return _signed_out_token(request, cfg)


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form body's fields (first value of each); {} for any other body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "提交的内容太长")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


async def _submitted_token(request: Request) -> str:
    return request.headers.get(CSRF_HEADER) or (await form_fields(request)).get(CSRF_FIELD, "")


async def check_csrf(request: Request) -> None:
    """Dependency for every state-changing request of the pages: the form field ``csrf_token`` (or
    header ``X-CSRF-Token``) must be this session's token; else 403 with a Chinese message."""
    if request.method in SAFE_METHODS:
        return
    expected = csrf_token(request)
    got = await _submitted_token(request)
    if not expected or not hmac.compare_digest(expected.encode(), got.encode()):
        log.warning("csrf_refused", path=request.url.path, had_token=bool(got))
        raise CsrfRefused()


# -- where to go after signing in ------------------------------------------------------------------
def safe_next(value: str | None, default: str = "/") -> str:
    """``value`` when it is a path on this site, else ``default``: never another host (``//evil``,
    ``/\\evil``, ``https://evil``) and never back into the sign-in pages."""
    if not value or len(value) > 2000 or any(c.isspace() or ord(c) < 32 or c == "\\" for c in value):
        return default
    if not value.startswith("/") or value.startswith("//"):
        return default
    try:
        parts = urlsplit(value)
    except ValueError:
        return default
    if parts.scheme or parts.netloc or parts.path.startswith(("/login", "/logout", "/auth/")):
        return default
    return value


# -- pages -----------------------------------------------------------------------------------------------
def _notice(request: Request, heading: str, lines: list[str], status: int, *, command: str = "",
            retry: bool = True) -> HTMLResponse:
    return templates.TemplateResponse(request, "auth_notice.html", {
        "title": heading, "heading": heading, "lines": lines, "command": command, "retry": retry,
        "principal": current_principal(request) if getattr(request.app.state, "auth", None) else None,
    }, status_code=status)


def _wants_json(request: Request) -> bool:
    """An API caller (a path with /api/, a JSON body, or asking for JSON and not HTML) rather than a page."""
    accept = request.headers.get("accept", "")
    return ("/api/" in request.url.path or request.headers.get("content-type", "").startswith("application/json")
            or ("application/json" in accept and "text/html" not in accept))


def install_auth(app: FastAPI, cfg: AuthConfig) -> None:
    """Sign-in on ``app``: its routes, the config the dependencies read (``app.state.auth``), the
    handlers that turn the dependencies' refusals into a redirect or a Chinese page, and the
    ``csrf_token``/``current_principal`` Jinja globals."""
    app.state.auth = cfg
    app.include_router(auth_router(cfg))
    templates.env.globals["csrf_token"] = csrf_token
    templates.env.globals["current_principal"] = current_principal
    templates.env.globals["role_names"] = ROLE_NAMES

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return RedirectResponse("/login?" + urlencode({"next": exc.next_url}), status_code=302)

    async def page_forbidden(request: Request, exc: Exception) -> Response:
        """require_page's refusal (always a page), or Principal.require_store's (a page, or JSON for
        an API)."""
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if not isinstance(exc, PageForbidden) and _wants_json(request):
            return JSONResponse({"detail": detail}, status_code=403)
        return _notice(request, "没有权限", [str(detail), "如需开通，请联系店长或管理员。"], 403, retry=False)

    async def csrf_refused(request: Request, exc: Exception) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": CSRF_REFUSED}, status_code=403)
        return _notice(request, "请求已过期", [CSRF_REFUSED], 403)

    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(PageForbidden, page_forbidden)
    app.add_exception_handler(Forbidden, page_forbidden)
    app.add_exception_handler(CsrfRefused, csrf_refused)


def auth_router(cfg: AuthConfig) -> APIRouter:
    """/login (GET page, POST local account), /auth/wecom/start, /auth/wecom/callback, /logout."""
    router = APIRouter(include_in_schema=False)
    login_state = _serializer(cfg, "login-state")

    def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=cfg.secure,
                            path="/")

    def start_session(response: Response, userid: str, via: str) -> None:
        token = _serializer(cfg, "session").dumps({"u": userid, "n": secrets.token_hex(16)})
        set_cookie(response, SESSION_COOKIE, token, cfg.session_max_age_seconds)
        service.record_sign_in(cfg.engine, userid)
        log.info("sign_in", userid=userid, via=via)

    def login_page(request: Request, *, next_url: str, status: int = 200, error: str = "", userid: str = "",
                   ) -> HTMLResponse:
        """The sign-in page, with this browser's signed-out CSRF cookie (made here if missing)."""
        new_cookie = ""
        if not request.cookies.get(CSRF_COOKIE):
            new_cookie = secrets.token_hex(16)
            request.scope["scrm.csrf_cookie"] = new_cookie
        query = urlencode({"next": next_url})
        response = templates.TemplateResponse(request, "login.html", {
            "wecom": cfg.client is not None, "in_wecom": in_wecom(request), "next": next_url,
            "wecom_href": f"/auth/wecom/start?via={'oauth' if in_wecom(request) else 'sso'}&{query}",
            "csrf": _signed_out_token(request, cfg), "error": error, "userid": userid,
        }, status_code=status)
        if new_cookie:
            set_cookie(response, CSRF_COOKIE, new_cookie, 7 * 24 * 3600)
        response.headers["Cache-Control"] = "no-store"
        return response

    def wecom_redirect(via: str, next_url: str) -> Response:
        nonce = secrets.token_hex(16)  # state: WeCom allows a-zA-Z0-9, at most 128 bytes
        redirect_uri = f"{cfg.base_url}/auth/wecom/callback"
        if via == "sso":
            url = cfg.sso_login_url + "?" + urlencode({
                "login_type": "CorpApp", "appid": cfg.corp_id, "agentid": cfg.agent_id,
                "redirect_uri": redirect_uri, "state": nonce})
        else:
            url = cfg.oauth_authorize_url + "?" + urlencode({
                "appid": cfg.corp_id, "redirect_uri": redirect_uri, "response_type": "code",
                "scope": "snsapi_base", "state": nonce, "agentid": cfg.agent_id}) + "#wechat_redirect"
        response = RedirectResponse(url, status_code=302)
        set_cookie(response, LOGIN_COOKIE, login_state.dumps({"s": nonce, "next": next_url, "via": via}),
                   LOGIN_SECONDS)
        return response

    @router.get("/login", response_class=HTMLResponse)
    def login(request: Request, next: str = Query("", max_length=2000)):  # noqa: A002 - the parameter's name
        next_url = safe_next(next, cfg.home)
        if current_principal(request) is not None:
            return RedirectResponse(next_url, status_code=302)
        if cfg.client is not None and in_wecom(request):
            return wecom_redirect("oauth", next_url)  # the WeCom client knows who this is: no page
        return login_page(request, next_url=next_url)

    @router.post("/login", response_class=HTMLResponse)
    async def login_local(request: Request):
        fields = await form_fields(request)
        next_url = safe_next(fields.get("next"), cfg.home)
        expected = _signed_out_token(request, cfg)
        if not expected or not hmac.compare_digest(expected.encode(), fields.get(CSRF_FIELD, "").encode()):
            log.warning("csrf_refused", path="/login")
            return _notice(request, "请求已过期", [CSRF_REFUSED], 403)
        userid, password = fields.get("userid", "").strip(), fields.get("password", "")
        if not userid or not password:
            return login_page(request, next_url=next_url, status=400, error="请输入账号和密码", userid=userid)
        if cfg.throttle.blocked(userid):
            log.warning("sign_in_throttled", userid=userid)
            minutes = cfg.throttle.window_seconds // 60
            return login_page(request, next_url=next_url, status=429, userid=userid,
                              error=f"这个账号的密码错误次数太多，请 {minutes} 分钟后再试")
        if not service.verify_password(cfg.engine, userid, password):
            failures = cfg.throttle.failed(userid)
            log.warning("sign_in_refused", userid=userid, reason="password", failures=failures)
            return login_page(request, next_url=next_url, status=401, error="账号或密码不正确", userid=userid)
        cfg.throttle.reset(userid)
        if service.principal_for(cfg.engine, userid) is None:
            return no_access(request, userid)
        response = RedirectResponse(next_url, status_code=303)
        start_session(response, userid, "local")
        return response

    @router.get("/auth/wecom/start")
    def wecom_start(request: Request, via: str = Query("sso"), next: str = Query("", max_length=2000)):  # noqa: A002
        if cfg.client is None:
            return _notice(request, "企业微信登录还没有开通", ["请使用本地账号登录，或请管理员先接入企业微信。"], 404)
        return wecom_redirect("oauth" if via == "oauth" else "sso", safe_next(next, cfg.home))

    @router.get("/auth/wecom/callback", response_class=HTMLResponse)
    def wecom_callback(request: Request, code: str = Query("", max_length=512),
                       state: str = Query("", max_length=256)):
        started = None
        token = request.cookies.get(LOGIN_COOKIE)
        if token:
            try:
                started = login_state.loads(token, max_age=LOGIN_SECONDS)
            except BadSignature:
                started = None
        if (not isinstance(started, dict) or not isinstance(started.get("s"), str) or not state
                or not hmac.compare_digest(started["s"].encode(), state.encode())):
            log.warning("sign_in_refused", reason="state", had_cookie=bool(token))
            refused = _notice(request, "登录请求已失效", [
                "这次登录不是从本页面发起的，或者已经超过 10 分钟。请回到登录页重新登录。"], 400)
            refused.delete_cookie(LOGIN_COOKIE, path="/")
            return refused
        next_url = safe_next(started.get("next"), cfg.home)
        if cfg.client is None:
            return _notice(request, "企业微信登录还没有开通", ["请使用本地账号登录。"], 404)
        if not code:
            return _notice(request, "没有完成企业微信登录", ["请回到登录页重新登录。"], 400)
        try:
            userid = cfg.client.get_user_by_code(code)
        except NotAMember:
            log.warning("sign_in_refused", reason="not_a_member")
            return _notice(request, "只对企业成员开放", [
                "你登录的微信不是本企业的成员。请用企业微信里的本企业账号登录。"], 403)
        except TransportError:
            log.warning("sign_in_failed", reason="wecom_unreachable")
            return _notice(request, "企业微信暂时没有响应", ["请稍后重新登录。"], 502)
        except WeComAPIError as exc:
            log.warning("sign_in_failed", reason="code", errcode=exc.errcode)
            return _notice(request, "登录已过期或失败", ["请回到登录页重新登录。"], 400)
        response: Response
        if service.principal_for(cfg.engine, userid) is None:
            response = no_access(request, userid)
        else:
            response = RedirectResponse(next_url, status_code=302)
            start_session(response, userid, started.get("via", "wecom"))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    def no_access(request: Request, userid: str) -> HTMLResponse:
        status = service.user_status(cfg.engine, userid)
        log.warning("sign_in_refused", userid=userid, reason=status)
        if status == "disabled":
            return _notice(request, "账号已停用", [f"账号 {userid} 已被停用。如有疑问，请联系店长或管理员。"], 403)
        return _notice(request, "还没有开通权限", [
            f"你的账号（{userid}）还没有分配角色，所以看不到任何页面。",
            "请把你的账号发给店长或管理员，请他在服务器上运行下面的命令为你开通：",
        ], 403, command=f"scrm users grant {userid} 角色 [--store 门店编号]")

    @router.get("/home", include_in_schema=False)
    def home(request: Request):
        """Each person's own first page: a sales rep's customers, the figures for those who may see
        them, else the index; signed out: the sign-in page."""
        principal = current_principal(request)
        if principal is None:
            return RedirectResponse("/login", status_code=302)
        if principal.may_see_kpis:
            return RedirectResponse("/dashboard", status_code=302)
        if principal.has(Role.sales_rep):
            return RedirectResponse("/crm", status_code=302)
        return RedirectResponse("/", status_code=302)

    @router.post("/logout")
    async def logout(request: Request):
        if _session(request, cfg) is not None:
            await check_csrf(request)
            log.info("sign_out", userid=_session(request, cfg)["u"])  # type: ignore[index]
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router


def auth_from_settings(settings: Any, redis: Any = None) -> AuthConfig:
    """The production sign-in: WeCom (when the corp secret is set) and local accounts; failures
    counted in Redis when given."""
    from scrm.auth.throttle import RedisThrottle
    from scrm.db import get_engine

    web, wecom = settings.web, settings.wecom
    corp_secret = wecom.secret.get_secret_value()
    client = None
    if corp_secret:
        from scrm.wecom.client import WeComClient

        client = WeComClient.from_settings(settings, redis=redis)
    return AuthConfig(
        engine=get_engine(settings.database_url()),
        secret=auth_secret(web.session_secret.get_secret_value(), corp_secret),
        base_url=web.base_url(),
        session_max_age_seconds=web.session_max_age_hours * 3600,
        client=client,
        corp_id=wecom.corp_id,
        agent_id=wecom.agent_id,
        oauth_authorize_url=web.oauth_authorize_url,
        sso_login_url=web.sso_login_url,
        throttle=RedisThrottle(redis) if redis is not None else MemoryThrottle(),
        home="/home",
    )

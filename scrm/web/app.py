"""The HTTP edge: WeCom callback receiver, health, readiness, Prometheus metrics and the pages.

Operator pages (/docs, /redoc, /openapi.json, /metrics) are served offline (Swagger UI and ReDoc
from the fastapi-offline package, no CDN) and only to whoever ``OperatorAccess`` allows. A 404
under the customer pages (/g, /s, /t, /l), or for a browser asking for HTML, is a Chinese page with
a way on; the APIs (/api, /toolbar/api, /wecom) keep their JSON or plain-text errors."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from zoneinfo import ZoneInfo

from fastapi import Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import StarletteHTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from scrm.callbacks.ingest import Enqueuer, InboxWriter
from scrm.callbacks.relay import inbox_backlog
from scrm.clicks.counting import DEFAULT_WINDOW
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.web.callback_endpoint import CallbackEndpoint
from scrm.web.operator import OPERATOR_PATHS, OperatorAccess, OperatorGate
from scrm.wecom.crypto import CallbackCrypto, SignatureError
from scrm.wecom.errors import CallbackError

log = get_logger(__name__)
CUSTOMER_PREFIXES = ("/g", "/s", "/t", "/l")
API_PREFIXES = ("/api/", "/toolbar/api/", "/wecom/")


def wants_page(request: Request) -> bool:
    """Answer a 404 with the Chinese page? Yes under the customer pages and for browsers
    (Accept: text/html); never for the APIs."""
    path = request.url.path
    if path.startswith(API_PREFIXES) or path in OPERATOR_PATHS:
        return False
    if any(path == p or path.startswith(p + "/") for p in CUSTOMER_PREFIXES):
        return True
    return "text/html" in request.headers.get("accept", "")


class _QueueCollector:
    def __init__(self, engine: Engine, queue_depth: Callable[[], int | None]):
        self.engine, self.queue_depth = engine, queue_depth

    def collect(self):
        backlog = GaugeMetricFamily("scrm_inbox_backlog", "Callbacks stored but not yet applied")
        try:
            backlog.add_metric([], inbox_backlog(self.engine))
        except Exception:
            backlog.add_metric([], float("nan"))
        yield backlog
        depth = GaugeMetricFamily("scrm_queue_depth", "Messages waiting in the callbacks queue")
        value = None
        try:
            value = self.queue_depth()
        except Exception:
            pass
        depth.add_metric([], float("nan") if value is None else value)
        yield depth


class _NoNonces:
    """The nonce store of an order API without a secret: never asked (every request gets 503)."""

    def first_use(self, nonce: str, ttl_seconds: int) -> bool:
        return False


def create_app(
    *,
    crypto: CallbackCrypto,
    engine: Engine,
    send: Callable[[list[int]], None],
    redis_ping: Callable[[], bool] | None = None,
    queue_depth: Callable[[], int | None] = lambda: None,
    max_body_bytes: int = 1024 * 1024,
    routing_settings=None,
    operator_pages_public: bool = True,
    operator_token: str = "",
    timezone: str = "Asia/Shanghai",
    orders_verifier=None,
    click_redis: Redis | None = None,
    clicks_secret: str | None = None,
    click_window: dt.timedelta = DEFAULT_WINDOW,
    clock: Callable[[], dt.datetime] = utcnow,
    auth=None,
    on_customers_changed: Callable[[list[str]], None] | None = None,
    crm_verifier=None,
    on_crm_messages: Callable[[list[str]], None] | None = None,
    crm_settings=None,
) -> CallbackEndpoint:
    """The ASGI app: the callback fast path in front of the FastAPI app (``.api``).

    ``operator_pages_public``/``operator_token``: who sees /docs, /redoc, /openapi.json and
    /metrics (see :mod:`scrm.web.operator`); the default (public) suits tests and the sandbox.
    ``timezone``: the corp's, for the times the pages show.
    ``orders_verifier``: checks the order API's signatures (:class:`scrm.orders.signing.Verifier`);
    without one the order API answers 503 (it never takes unsigned orders).
    ``click_redis``: where ``/t/{code}`` queues clicks for the write-behind (``scrm.clicks.flush``);
    None writes each click to the database in the request. ``clicks_secret`` signs customer tokens
    and salts visitor keys (None: a random one for this app, fine for tests). ``clock``: the time a
    click is recorded at (the demo drives the redirect with a simulated clock).
    ``auth``: sign-in (:class:`scrm.web.auth_routes.AuthConfig`); with it come /login and the
    managers' dashboard (/dashboard, /api/kpi); without it neither is served.
    ``on_customers_changed``: told whose order or refund the order API recorded (the layering
    workers re-layer them, debounced).
    ``crm_verifier``: checks POST /api/crm/records (None: the API answers 503);
    ``on_crm_messages``: told whose calls and SMS it stored (their follow-up records are rebuilt).
    ``crm_settings``: :class:`scrm.config.CrmSettings` for the CRM pages (defaults without)."""
    from fastapi_offline import FastAPIOffline

    from scrm.web.pages import not_found_page

    app = FastAPIOffline(title="scrm", docs_url="/docs", redoc_url="/redoc")
    access = OperatorAccess(public=operator_pages_public, token=operator_token)
    app.state.operator_access = access
    app.add_middleware(OperatorGate, access=access)

    @app.exception_handler(StarletteHTTPException)
    async def page_errors(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and wants_page(request):
            return not_found_page(request, exc)
        return await http_exception_handler(request, exc)

    registry = CollectorRegistry()
    received = Counter("scrm_callbacks_received_total", "Callbacks accepted and stored", registry=registry)
    rejected = Counter("scrm_callbacks_rejected_total", "Callbacks refused", ["reason"], registry=registry)
    duplicate = Counter("scrm_callbacks_duplicate_total", "WeCom retries of a stored callback", registry=registry)
    registry.register(_QueueCollector(engine, queue_depth))
    writer = InboxWriter(engine, Enqueuer(send))
    app.state.engine = engine

    def count(outcome: str) -> None:
        if outcome == "stored":
            received.inc()
        elif outcome == "duplicate":
            duplicate.inc()
        else:
            rejected.labels(outcome).inc()


    def refuse(status: int, reason: str, detail: str) -> PlainTextResponse:
        rejected.labels(reason).inc()
        log.warning("callback_rejected", reason=reason, status=status, detail=detail[:200])
        return PlainTextResponse(detail, status_code=status)

    @app.get("/wecom/callback", response_class=PlainTextResponse)
    def verify_url(msg_signature: str = Query(""), timestamp: str = Query(""), nonce: str = Query(""),
                   echostr: str = Query("")):
        try:
            return PlainTextResponse(crypto.verify_url(msg_signature, timestamp, nonce, echostr))
        except SignatureError as exc:
            return refuse(403, "signature", str(exc))
        except CallbackError as exc:
            return refuse(400, "malformed", str(exc))

    from scrm.config import RoutingSettings
    from scrm.web.pages import store_pages

    app.include_router(store_pages(engine, routing_settings or RoutingSettings(), tz=ZoneInfo(timezone),
                                   access=access))

    from scrm.orders.signing import Verifier
    from scrm.web.orders_api import orders_router

    app.include_router(orders_router(engine, orders_verifier or Verifier(secret="", nonces=_NoNonces()),
                                     on_customers_changed))

    from scrm.web.crm_api import crm_records_router

    app.include_router(crm_records_router(engine, crm_verifier or Verifier(secret="", nonces=_NoNonces()),
                                          on_crm_messages))

    from scrm.clicks.recording import PREFETCH_HEADERS, ClickRecorder, LinkLookupFailed
    from scrm.web.pages import PageNotFound
    from scrm.web.templating import templates

    clicks = ClickRecorder(engine, click_redis, secret=clicks_secret or secrets.token_hex(32), tz=ZoneInfo(timezone),
                           window=click_window, clock=clock)
    app.state.clicks = clicks

    @app.api_route("/t/{code}", methods=["GET", "HEAD"], include_in_schema=False)  # a customer link, not an API
    def tracked_link(code: str, request: Request):
        """A tracked SOP link: queue the click (no database write here), send the reader on.
        Cached codes with Redis up are answered before FastAPI by :mod:`scrm.web.click_fastpath`;
        this route takes the rest (first sight of a code, unknown codes, Redis backing off)."""
        try:
            url = clicks.url(code)
        except LinkLookupFailed as exc:
            log.error("tracked_link_unavailable", code=code, error=str(exc))
            return templates.TemplateResponse(request, "notice.html", {
                "title": "活动页面暂时打不开", "heading": "活动页面暂时打不开",
                "lines": ["请稍后再点一次这个链接。"], "suggestion": None, "show_locate": False,
            }, status_code=503)
        if url is None:
            raise PageNotFound(heading="这个活动链接已经失效")
        headers = request.headers
        client = request.client
        clicks.record(code, user_agent=headers.get("user-agent"),
                      headers={name: value for name in PREFETCH_HEADERS if (value := headers.get(name))},
                      method=request.method, client_ip=client.host if client else None,
                      token=request.query_params.get("c"))
        return RedirectResponse(url, status_code=302)

    if auth is not None:
        from scrm.config import RoutingSettings as _Routing
        from scrm.web.auth_routes import csrf_token, current_principal, install_auth
        from scrm.web.dashboard import KpiQueries, dashboard_router
        from scrm.web.lookups import store_choices

        install_auth(app, auth)
        zone = ZoneInfo(timezone)
        cap = (routing_settings or _Routing()).group_qr_cap
        app.include_router(dashboard_router(KpiQueries(engine, tz=zone, cap=cap), current_principal, tz=zone,
                                            stores=lambda: store_choices(engine), csrf=csrf_token))
        from scrm.config import CrmSettings
        from scrm.web.crm_pages import crm_router

        app.include_router(crm_router(engine, current_principal, tz=zone, csrf=csrf_token,
                                      crm_settings=crm_settings or CrmSettings()))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        checks = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        if redis_ping is not None:
            try:
                checks["redis"] = "ok" if redis_ping() else "error"
            except Exception as exc:
                checks["redis"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    from scrm.web.click_fastpath import ClickFastPath

    return CallbackEndpoint(app, crypto=crypto, store=writer.store, on_result=count, max_body_bytes=max_body_bytes,
                            rest=ClickFastPath(app, clicks))


def app_from_settings(settings=None, *, clock: Callable[[], dt.datetime] = utcnow) -> CallbackEndpoint:
    """The production app: settings decide the database, Redis and the WeCom identity.
    ``clock``: when clicks happen (the demo seeding passes its simulated clock)."""
    from scrm.clicks.recording import click_queue_redis
    from scrm.config import get_settings
    from scrm.crm.hooks import crm_link_hook, fan_out
    from scrm.crm.queue import crm_notifier
    from scrm.db import get_engine
    from scrm.layers.notify import relayer_notifier
    from scrm.redisserver import get_redis, redis_url
    from scrm.runtime import build_crypto
    from scrm.web.crm_api import crm_verifier
    from workers.broker import setup_broker

    settings = settings or get_settings()
    url = redis_url(settings)
    setup_broker(url=url)
    from workers.actors import enqueue_callbacks

    r = get_redis(url)
    auth = None
    if settings.web.session_secret.get_secret_value() or settings.wecom.secret.get_secret_value():
        from scrm.web.auth_routes import auth_from_settings

        auth = auth_from_settings(settings, r)
    else:
        log.warning("dashboard_disabled", corp_id=settings.wecom.corp_id,
                    hint="set SCRM_WEB__SESSION_SECRET (or the corp secret) to sign dashboard sessions")
    engine = get_engine(settings.database_url())
    crm_mark = crm_notifier(r, settings)
    app = create_app(
        crypto=build_crypto(settings),
        engine=engine,
        send=enqueue_callbacks,
        redis_ping=r.ping,
        queue_depth=lambda: r.llen("dramatiq:callbacks"),
        max_body_bytes=settings.web.max_body_bytes,
        routing_settings=settings.routing,
        operator_pages_public=settings.web.operator_pages_public or settings.wecom.is_sandbox,
        operator_token=settings.web.operator_token.get_secret_value(),
        timezone=settings.sop.timezone,
        orders_verifier=orders_verifier(settings, r),
        click_redis=click_queue_redis(url),
        clicks_secret=secret_for_clicks(settings),
        click_window=dt.timedelta(hours=settings.clicks.unique_window_hours),
        clock=clock,
        auth=auth,
        # An order's mobile may link calls and SMS waiting on it (then their records are rebuilt).
        on_customers_changed=fan_out(relayer_notifier(r, settings), crm_link_hook(engine, crm_mark)),
        crm_verifier=crm_verifier(settings, r),
        on_crm_messages=crm_mark,
        crm_settings=settings.crm,
    )
    if settings.wecom.secret.get_secret_value():
        app.api.include_router(toolbar_from_settings(settings, r))
    return app


def secret_for_clicks(settings) -> str | None:
    """The clicks secret from settings; without any secret to derive it from (a real corp not
    configured yet), a random one for this process: the redirect works and clicks count, but
    customer tokens are refused and anonymous visitors are keyed per process (logged)."""
    from scrm.clicks.secret import clicks_secret
    from scrm.config import ConfigError

    try:
        return clicks_secret(settings)
    except ConfigError as exc:
        log.warning("clicks_secret_missing", detail=str(exc))
        return None


def orders_verifier(settings, redis):
    """The order API's signature check: the shared secret from settings, nonces in Redis."""
    from scrm.orders.signing import RedisNonces, Verifier

    return Verifier(secret=settings.orders.secret.get_secret_value(), nonces=RedisNonces(redis),
                    tolerance_seconds=settings.orders.timestamp_tolerance_seconds)


def toolbar_from_settings(settings, redis):
    """The chat toolbar page, wired to the WeCom client and the SOP templates on disk."""
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from scrm.db import get_engine
    from scrm.journeys.jobs import journeys_loader
    from scrm.sop.jobs import TemplatesRefused, load_templates
    from scrm.web.toolbar import ToolbarConfig, session_secret, toolbar_router
    from scrm.wecom.client import WeComClient

    sop = settings.sop

    def templates():
        try:
            return load_templates(Path(sop.templates_dir), sop)
        except TemplatesRefused as exc:
            log.error("sop_templates_refused", problems=str(exc)[:500])
            return {}

    return toolbar_router(ToolbarConfig(
        engine=get_engine(settings.database_url()),
        client=WeComClient.from_settings(settings, redis=redis),
        corp_id=settings.wecom.corp_id,
        agent_id=settings.wecom.agent_id,
        secret=session_secret(settings.web.session_secret.get_secret_value(), settings.wecom.secret.get_secret_value()),
        base_url=settings.web.base_url(),
        authorize_url=settings.web.oauth_authorize_url,
        tz=ZoneInfo(sop.timezone),
        templates=templates,
        sandbox=settings.wecom.is_sandbox,  # simulated sends: the sandbox corp only
        journeys=journeys_loader(settings),  # 1:1 journey messages, in a customer's chat
    ))

"""The HTTP edge: WeCom callback receiver, health, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Callable


from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text
from sqlalchemy.engine import Engine

from scrm.callbacks.ingest import Enqueuer, InboxWriter, open_callback
from scrm.callbacks.relay import inbox_backlog
from scrm.logs import get_logger
from scrm.wecom.crypto import CallbackCrypto, CorpMismatch, SignatureError
from scrm.wecom.errors import CallbackError

log = get_logger(__name__)


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


def create_app(
    *,
    crypto: CallbackCrypto,
    engine: Engine,
    send: Callable[[int], None],
    redis_ping: Callable[[], bool] | None = None,
    queue_depth: Callable[[], int | None] = lambda: None,
    max_body_bytes: int = 1024 * 1024,
) -> FastAPI:
    app = FastAPI(title="scrm", docs_url="/docs")
    registry = CollectorRegistry()
    received = Counter("scrm_callbacks_received_total", "Callbacks accepted and stored", registry=registry)
    rejected = Counter("scrm_callbacks_rejected_total", "Callbacks refused", ["reason"], registry=registry)
    duplicate = Counter("scrm_callbacks_duplicate_total", "WeCom retries of a stored callback", registry=registry)
    registry.register(_QueueCollector(engine, queue_depth))
    writer = InboxWriter(engine, Enqueuer(send))
    app.state.engine = engine

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

    @app.post("/wecom/callback")
    async def receive(request: Request, msg_signature: str = Query(""), timestamp: str = Query(""),
                      nonce: str = Query("")):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return refuse(413, "too_large", "body over limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return refuse(413, "too_large", "body over limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            row = open_callback(crypto, body=body, msg_signature=msg_signature, timestamp=timestamp, nonce=nonce)
        except SignatureError as exc:
            return refuse(403, "signature", str(exc))
        except CorpMismatch as exc:
            return refuse(400, "wrong_corp", str(exc))
        except CallbackError as exc:
            return refuse(400, "malformed", str(exc))
        try:
            inbox_id = await writer.store(row)
        except Exception as exc:  # database down: not stored, so WeCom must retry
            rejected.labels("storage").inc()
            log.error("callback_not_stored", error=type(exc).__name__)
            return PlainTextResponse("storage unavailable", status_code=503)
        if inbox_id is None:
            duplicate.inc()
        else:
            received.inc()
        return PlainTextResponse("success")

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

    return app


def app_from_settings(settings=None) -> FastAPI:
    """The production app: settings decide the database, Redis and the WeCom identity."""
    from scrm.config import get_settings
    from scrm.db import get_engine
    from scrm.redisserver import get_redis, redis_url
    from scrm.runtime import build_crypto
    from workers.broker import setup_broker

    settings = settings or get_settings()
    url = redis_url(settings)
    setup_broker(url=url)
    from workers.actors import process_callback

    r = get_redis(url)
    return create_app(
        crypto=build_crypto(settings),
        engine=get_engine(settings.database_url()),
        send=lambda inbox_id: process_callback.send(inbox_id),
        redis_ping=r.ping,
        queue_depth=lambda: r.llen("dramatiq:callbacks"),
        max_body_bytes=settings.web.max_body_bytes,
    )

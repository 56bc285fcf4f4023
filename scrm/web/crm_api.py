"""``POST /api/crm/records``: calls and SMS from a call centre or an SMS gateway.

Signed exactly like the order API (:mod:`scrm.orders.signing`: HMAC-SHA256 of timestamp, nonce and
raw body with ``crm.secret``; its nonces under their own Redis prefix). Thin: the body is a batch
(:class:`scrm.crm.ingest_schema.RecordsBatch`, at most 1000 records) stored by
:func:`scrm.crm.ingest.record_batch`.

Outcomes: each record is answered on its own (``created``, ``unchanged``: already stored with the
same content, ``conflict``: its id is stored with other content and the stored one is kept,
``invalid``: refused with the reason). The records that were accepted are stored whatever the
status; the status says whether all were: 200 all accepted, 409 some conflict, 422 some invalid
(422 wins over 409). Resending a batch is harmless (idempotent by channel and id)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from scrm.crm.ingest import record_batch
from scrm.crm.ingest_schema import RecordsBatch, RecordsBatchDoc, problems
from scrm.db import utcnow
from scrm.logs import get_logger
from scrm.orders.signing import RedisNonces, SignatureRefused, Verifier

log = get_logger(__name__)
NONCE_PREFIX = "scrm:crm:nonce:"
SIGNED = ("Signed like the order API: X-Scrm-Timestamp (Unix seconds), X-Scrm-Nonce (8-64 of A-Za-z0-9_-) and "
          "X-Scrm-Signature = hex HMAC-SHA256(crm secret, timestamp + \"\\n\" + nonce + \"\\n\" + raw body).")
NOT_CONFIGURED = ("the CRM records API is not configured: set SCRM_CRM__SECRET (unsigned records are never "
                  "accepted)")


def _inlined(schema: dict) -> dict:
    """A JSON schema without ``$defs`` (OpenAPI resolves refs from its own root, not the body's)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def crm_verifier(settings, redis) -> Verifier:
    """The records API's signature check: ``crm.secret``, nonces in Redis under their own prefix."""
    return Verifier(secret=settings.crm.secret.get_secret_value(), nonces=RedisNonces(redis, prefix=NONCE_PREFIX),
                    tolerance_seconds=settings.crm.timestamp_tolerance_seconds)


def crm_records_router(engine: Engine, verifier: Verifier,
                       on_customers_changed: Callable[[list[str]], None] | None = None) -> APIRouter:
    """``on_customers_changed`` is told whose messages were stored (rebuild their records)."""
    router = APIRouter(prefix="/api/crm", tags=["crm"])

    @router.post("/records", description=SIGNED, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inlined(RecordsBatchDoc.model_json_schema())}}}},
        responses={200: {"description": "every record stored or already there"},
                   401: {"description": "unsigned, forged or stale"},
                   409: {"description": "replayed nonce, or some record ids stored with other content"},
                   422: {"description": "the body is not a batch, or some records are invalid"},
                   503: {"description": "no secret configured"}})
    async def report_records(request: Request):
        """A batch of calls and/or SMS. Idempotent by (channel, id); per-record outcomes."""
        body = await request.body()
        h = request.headers
        try:
            verifier.verify(h.get("x-scrm-timestamp"), h.get("x-scrm-nonce"), h.get("x-scrm-signature"), body)
        except SignatureRefused as exc:
            message = NOT_CONFIGURED if exc.status == 503 else exc.message
            log.warning("crm_records_refused", status=exc.status, reason=message)
            raise HTTPException(exc.status, message) from None
        try:
            batch = RecordsBatch.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, "invalid request: " + problems(exc)) from None
        report = await run_in_threadpool(record_batch, engine, batch.records, now=utcnow())
        counts = {k: report.count(k) for k in ("created", "unchanged", "conflict", "invalid")}
        log.info("crm_records_received", records=len(report.results), customers=len(report.customers), **counts)
        if report.customers and on_customers_changed is not None:
            try:
                on_customers_changed(sorted(report.customers))
            except Exception as exc:  # noqa: BLE001 - the records are stored; a rebuild catches up
                log.warning("crm_notify_failed", customers=len(report.customers), error=str(exc)[:200])
        status = 422 if counts["invalid"] else 409 if counts["conflict"] else 200
        results = [{k: v for k, v in asdict(r).items() if v is not None or k in ("channel", "id")}
                   for r in report.results]
        return JSONResponse({**counts, "results": results}, status_code=status)

    return router

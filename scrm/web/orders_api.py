"""The shop's order API: ``POST /api/orders`` and ``POST /api/orders/refunds``.

Thin: the signature is checked on the raw body first (:mod:`scrm.orders.signing`), then the body is
parsed by :mod:`scrm.orders.schema` and recorded by :mod:`scrm.orders.service`, whose refusals
carry a reason and a kind that becomes the HTTP status here. A refused request stores nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine

from scrm.logs import get_logger
from scrm.orders import service
from scrm.orders.schema import OrderIn, RefundIn
from scrm.orders.signing import SignatureRefused, Verifier

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
HTTP_STATUS = {"not_found": 404, "conflict": 409}
SIGNED = ("Signed: X-Scrm-Timestamp (Unix seconds), X-Scrm-Nonce (8-64 of A-Za-z0-9_-) and X-Scrm-Signature = "
          "hex HMAC-SHA256(secret, timestamp + \"\\n\" + nonce + \"\\n\" + raw body). See README, 'Orders'.")


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema(by_alias=True)}}}}


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid request: " + "; ".join(parts)


def orders_router(engine: Engine, verifier: Verifier,
                  on_customers_changed: Callable[[list[str]], None] | None = None) -> APIRouter:
    """``on_customers_changed`` is told whose order or refund was recorded (their layer may move)."""
    router = APIRouter(prefix="/api/orders", tags=["orders"])

    def changed(created: bool, external_userid: str | None) -> None:
        if not (created and external_userid and on_customers_changed):
            return
        try:
            on_customers_changed([external_userid])
        except Exception as exc:  # noqa: BLE001 - the order is recorded; the nightly pass catches up
            log.warning("layer_notify_failed", external_userid=external_userid, error=str(exc)[:200])

    async def signed_body(request: Request) -> bytes:
        body = await request.body()
        h = request.headers
        try:
            verifier.verify(h.get("x-scrm-timestamp"), h.get("x-scrm-nonce"), h.get("x-scrm-signature"), body)
        except SignatureRefused as exc:
            log.warning("order_request_refused", status=exc.status, reason=exc.message, path=request.url.path)
            raise HTTPException(exc.status, exc.message) from None
        return body

    def parse(model: type[M], body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, _problems(exc)) from None

    @router.post("", openapi_extra=_body_doc(OrderIn), description=SIGNED,
                 responses={201: {"description": "recorded"}, 200: {"description": "already recorded, unchanged"},
                            401: {"description": "unsigned, forged or stale"}, 409: {"description": "replayed "
                            "nonce, or the order id already recorded with different content"},
                            422: {"description": "invalid order"}, 503: {"description": "no secret configured"}})
    async def report_order(request: Request):
        """A paid order from the shop. Idempotent by (source, order_id)."""
        order = parse(OrderIn, await signed_body(request))
        try:
            out = service.record_order(engine, order)
        except service.OrderError as exc:
            raise HTTPException(HTTP_STATUS.get(exc.kind, 409), exc.message) from None
        changed(out.created, out.external_userid)
        return JSONResponse({"order_id": out.order_id, "created": out.created, "matched": out.matched,
                             "matched_by": out.matched_by}, status_code=201 if out.created else 200)

    @router.post("/refunds", openapi_extra=_body_doc(RefundIn), description=SIGNED,
                 responses={201: {"description": "recorded"}, 200: {"description": "already recorded, unchanged"},
                            404: {"description": "the order is not recorded"},
                            409: {"description": "replayed nonce, refunds above the order's amount, or the refund "
                                                 "id already recorded with different content"},
                            422: {"description": "invalid refund"}, 503: {"description": "no secret configured"}})
    async def report_refund(request: Request):
        """A full or partial refund of a recorded order. Idempotent by (source, refund_id)."""
        refund = parse(RefundIn, await signed_body(request))
        try:
            out = service.record_refund(engine, refund)
        except service.OrderError as exc:
            raise HTTPException(HTTP_STATUS.get(exc.kind, 409), exc.message) from None
        changed(out.created, out.external_userid)
        return JSONResponse({"refund_id": out.refund_id, "order_id": out.order_id, "created": out.created,
                             "refunded_fen": out.refunded_fen, "amount_fen": out.amount_fen},
                            status_code=201 if out.created else 200)

    return router

"""What the shop sends for an order and a refund: one pydantic shape for the API and the CSV import,
so both refuse the same things with the same reasons (and store nothing when they do)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from scrm.orders.mobile import normalise_mobile

Fen = Annotated[int, Field(ge=0, strict=True, le=10**13, description="amount in fen (1 CNY = 100 fen)")]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$")]


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


class OrderIn(BaseModel):
    """A paid order. At least one of external_userid, unionid, mobile names the customer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    order_id: Id
    source: Annotated[str, Field(min_length=1, max_length=32)] = "shop"
    paid_at: AwareDatetime = Field(description="ISO-8601 with a zone, e.g. 2026-11-30T10:15:00+08:00")
    amount_fen: Fen
    items: list[dict[str, Any]] = Field(default_factory=list, max_length=500)
    store_code: Annotated[str, Field(max_length=64)] | None = None
    link_code: Annotated[str, Field(max_length=24)] | None = Field(
        default=None, description="the tracked-link code (/t/{code}) the order came through")
    from_param: Annotated[str, Field(max_length=128)] | None = Field(
        default=None, alias="from", description="the `from` parameter the order came through")
    external_userid: Annotated[str, Field(max_length=64)] | None = None
    unionid: Annotated[str, Field(max_length=64)] | None = None
    mobile: str | None = Field(default=None, description="a Chinese mobile; stored as +86 and 11 digits")

    _blanks = field_validator("store_code", "link_code", "from_param", "external_userid", "unionid", "mobile",
                              mode="before")(_blank_is_none)

    @field_validator("mobile")
    @classmethod
    def _mobile(cls, value: str | None) -> str | None:
        return None if value is None else normalise_mobile(value)

    @model_validator(mode="after")
    def _someone(self) -> OrderIn:
        if not (self.external_userid or self.unionid or self.mobile):
            raise ValueError("the customer is missing: give at least one of external_userid, unionid, mobile")
        return self


class RefundIn(BaseModel):
    """A refund (full or partial) of a recorded order; its own id makes a repeated call harmless."""

    model_config = ConfigDict(extra="forbid")

    refund_id: Id
    order_id: Id
    source: Annotated[str, Field(min_length=1, max_length=32)] = "shop"
    amount_fen: Annotated[int, Field(gt=0, strict=True, le=10**13, description="refunded amount in fen")]
    refunded_at: AwareDatetime = Field(description="ISO-8601 with a zone")

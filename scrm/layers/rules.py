"""The layer and tag rule format: what operators write in ``layers/*.yaml``.

A layer exists only where it leads to a different operation (new, first-time buyer, repeat
buyer, high value, dormant, churned), so the catalogue says what each layer is *for*. Rules are
tried top to bottom and the first whose conditions all hold puts the customer in its layer:
precedence is the order of ``rules``, written down, never implied. A customer no rule matches is
in ``default_layer``.

Tags are what a reader of the customer acts on: the layer, the home store (for sales), the region
(for operators), and condition tags ("近7天点击未下单"). They live as WeCom corp tags in one tag
group scrm owns.

Condition semantics (the SQL full pass and every test oracle follow them exactly):
- ``now`` is the moment of evaluation; a "day" is 24 h, so "days since t" is
  ``floor((now - t) / 24 h)``; ``within_days: N`` means ``now - N days < t <= now``.
- An order counts when it is paid and not fully refunded (``refunded_fen < amount_fen``); GMV is
  ``amount - refunded`` in yuan over the counted orders.
- ``unique_clicks`` counts the customer's counted clicks (``link_clicks.counted`` with their
  ``external_userid``): one per link per unique-click window.
- ``days_since_last_order`` / ``days_since_last_active`` / ``days_since_added`` never hold for a
  customer without such a moment (no order, nothing at all, no add time).
- Keys of one condition are AND; ``any`` is OR over its items; ``all`` AND; ``not`` negates.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
WECOM_TAG_NAME_MAX = 30  # characters (add_corp_tag / edit_corp_tag refuse longer names)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, populate_by_name=True)


class _Bounds(_Strict):
    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class Count(_Bounds):
    """How many (orders, unique clicks), optionally only within the last N days."""

    within_days: int | None = Field(default=None, ge=1, le=3650)


class Amount(_Bounds):
    """Net GMV in yuan (paid minus refunded), optionally only within the last N days."""

    within_days: int | None = Field(default=None, ge=1, le=3650)


class Days(_Bounds):
    """Whole days since a moment (``floor((now - t) / 24 h)``)."""


class Condition(_Strict):
    orders: Count | None = Field(default=None, description="Counted orders (paid, not fully refunded)")
    gmv: Amount | None = Field(default=None, description="Net GMV in yuan")
    days_since_last_order: Days | None = None
    unique_clicks: Count | None = Field(default=None, description="Counted clicks on tracked links")
    days_since_last_active: Days | None = Field(
        default=None, description="Since the last order, counted click or add, whichever is latest")
    days_since_added: Days | None = Field(default=None, description="Since the first follow relation was added")
    in_group: bool | None = Field(default=None, description="Member of at least one active customer group")
    stores: list[str] = Field(default_factory=list, description="Home store code is one of these")
    cities: list[str] = Field(default_factory=list, description="Home store's city is one of these")
    states: list[str] = Field(default_factory=list, description=(
        "The state (渠道码 state) that brought them: exact, or a prefix ending in *"))
    deleted: bool | None = Field(default=None, description="No employee follows them any more (churned)")
    any: list[Condition] = Field(default_factory=list)
    all: list[Condition] = Field(default_factory=list)
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.model_dump(exclude_defaults=True, by_alias=True):
            raise ValueError("an empty condition: give at least one key (an empty `when` would match everyone)")
        return self


class Layer(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="Stable: history and SOP targets refer to it")
    name: str = Field(min_length=1, max_length=24, description="Chinese name shown to people")
    operation: str = Field(min_length=1, description="What is done differently for this layer (why it exists)")


class LayerRule(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="Stable: a customer's history says which rule moved them")
    layer: str = Field(description="A layer id from `layers`")
    when: Condition
    description: str = ""


class TagRule(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, description="The WeCom tag's name (≤30 characters)")
    audience: Literal["sales", "operators", "all"] = "all"
    when: Condition

    @field_validator("name")
    @classmethod
    def _wecom_length(cls, v: str) -> str:
        if len(v) > WECOM_TAG_NAME_MAX:
            raise ValueError(f"{v!r} has {len(v)} characters; WeCom tag names hold at most {WECOM_TAG_NAME_MAX}")
        return v


# The placeholders each per-layer / per-store / per-city tag name pattern may use (at least one,
# each at most once): the layer's name; the store's name and/or code; the city.
TAG_PLACEHOLDERS: dict[str, tuple[str, ...]] = {"layer_tag": ("name",), "store_tag": ("name", "code"),
                                                "city_tag": ("city",)}


def placeholders(pattern: str) -> list[str]:
    """The ``{field}`` names in a tag name pattern (``'门店·{name}'`` -> ``['name']``); raises
    ValueError on a stray brace."""
    return [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]


class TagSettings(_Strict):
    """Which rule tags exist. Names with ``{name}`` / ``{city}`` make one tag per store / city."""

    layer_tag: str | None = Field(default="分层·{name}", description="One tag per layer ({name}: the layer's "
                                  "name); null: none")
    store_tag: str | None = Field(default="门店·{name}", description="The home store, for sales ({name} and/or "
                                  "{code}: the store's); null: none")
    city_tag: str | None = Field(default="区域·{city}", description="The home store's city ({city}), for "
                                 "operators; null: none")
    rules: list[TagRule] = Field(default_factory=list)

    @field_validator("layer_tag", "store_tag", "city_tag")
    @classmethod
    def _placeholders(cls, v: str | None, info: Any) -> str | None:
        """A pattern names what tells its tags apart (without it every layer / store / city would
        get the same tag), each once, and nothing that cannot be filled in."""
        if v is None:
            return v
        allowed = TAG_PLACEHOLDERS[info.field_name]
        shown = " and/or ".join("{" + a + "}" for a in allowed)
        try:
            found = placeholders(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a tag name pattern ({exc}); write {shown} where it goes, and no "
                             "other braces") from None
        unknown = [f for f in found if f not in allowed]
        if unknown:
            raise ValueError(f"{v!r}: {{{unknown[0]}}} is not filled in; {info.field_name} may use {shown}")
        if not found or len(found) != len(set(found)):
            raise ValueError(f"{v!r} must contain {shown} once")
        return v

    def fill(self, key: str, **values: str) -> str | None:
        """The tag name ``key`` (layer_tag, store_tag, city_tag) makes for one layer / store /
        city (``name=``, ``code=``, ``city=``), or None when that kind of tag is switched off."""
        pattern = getattr(self, key)
        if pattern is None:
            return None
        for field, value in values.items():
            pattern = pattern.replace("{" + field + "}", value)
        return pattern


class RuleSet(_Strict):
    """Everything in the rules folder (``layers.rules_dir``): each top-level key lives in one of
    its files (see scrm/layers/lint.py)."""

    layers: list[Layer] = Field(min_length=1, description="The layers: each leads to a different operation")
    default_layer: str = Field(description="The layer of a customer no rule matches")
    rules: list[LayerRule] = Field(default_factory=list, description=(
        "Tried top to bottom; the first whose `when` holds puts the customer in its layer"))
    tags: TagSettings = Field(default_factory=TagSettings, description="The WeCom tags scrm keeps on customers")

    @model_validator(mode="after")
    def _references(self):
        ids = [layer.id for layer in self.layers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"layer ids used twice: {', '.join(dupes)}")
        known = set(ids)
        if self.default_layer not in known:
            raise ValueError(f"default_layer {self.default_layer!r} is not a layer ({', '.join(ids)})")
        for rule in self.rules:
            if rule.layer not in known:
                raise ValueError(f"rule {rule.id!r} puts customers in {rule.layer!r}, which is not a layer")
        rule_ids = [r.id for r in self.rules]
        for name, seen in (("rule", rule_ids), ("tag rule", [t.id for t in self.tags.rules])):
            twice = sorted({i for i in seen if seen.count(i) > 1})
            if twice:
                raise ValueError(f"{name} ids used twice: {', '.join(twice)}")
        return self

    def layer(self, layer_id: str) -> Layer:
        return next(layer for layer in self.layers if layer.id == layer_id)

    def tag_bit(self, tag_rule_id: str) -> int:
        """Condition tag i is bit i of ``customer_layers.tag_bits`` (order of ``tags.rules``)."""
        return 1 << [t.id for t in self.tags.rules].index(tag_rule_id)

    def layer_ids(self) -> list[str]:
        return [layer.id for layer in self.layers]


# --------------------------------------------------------------------------------------------
# JSON Schema for editors

SCHEMA_PATH = Path("layers") / "schema.json"


def json_schema() -> dict[str, Any]:
    """The schema of one rules file, with YAML key names (``not``, not ``not_``). A file may hold
    only some of the top-level keys (another file in the folder holds the rest), so none is
    required at the top; lint checks the folder as a whole."""
    schema = RuleSet.model_json_schema(by_alias=True)
    schema.pop("required", None)
    schema["description"] = ("One file of the layer and tag rules folder (layers/): any of layers, "
                             "default_layer, rules, tags; each top-level key in one file only.")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_json_schema() -> str:
    """The exact text of layers/schema.json (stable key order, Chinese-safe, trailing newline)."""
    return json.dumps(json_schema(), ensure_ascii=False, indent=2) + "\n"


def write_json_schema(path: str | Path = SCHEMA_PATH) -> Path:
    path = Path(path)
    path.write_text(render_json_schema(), encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m scrm.layers.rules [PATH]: regenerate layers/schema.json
    print(write_json_schema(sys.argv[1] if len(sys.argv) > 1 else SCHEMA_PATH))

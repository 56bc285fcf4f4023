"""Each customer's layer (and the rule that put them there), and the history of moves."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import BigInteger, Index, Table
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class CustomerLayer(SQLModel, table=True):
    """One row per customer the pass has seen. Rewritten only when something in it changed."""

    __tablename__ = "customer_layers"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_customer_layers_home_store_layer", "home_store", "layer"),)

    external_userid: str = Field(primary_key=True, max_length=64)
    layer: str = Field(max_length=32)  # counted per store through (home_store, layer)
    rule_id: str | None = Field(default=None, max_length=32)  # None: no rule matched, the default layer
    home_store: str | None = Field(default=None, max_length=32)
    # Condition tags that hold: bit i is the ruleset's tags.rules[i] (RuleSet.tag_bit).
    tag_bits: int = Field(default=0, sa_type=BigInteger)
    since: datetime = Field(default_factory=utcnow)  # when they entered this layer
    computed_at: datetime = Field(default_factory=utcnow)
    # The WeCom rule tags of their follow relations need a sync (layer, store or tag bits changed).
    tags_dirty: bool = Field(default=True, index=True)


class LayerChange(SQLModel, table=True):
    """A move between layers (first placement: ``from_layer`` None), and the rule that made it."""

    __tablename__ = "layer_changes"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_layer_changes_store_changed_at", "home_store", "changed_at"),)

    id: int | None = Field(default=None, primary_key=True)
    external_userid: str = Field(max_length=64, index=True)
    from_layer: str | None = Field(default=None, max_length=32)
    to_layer: str = Field(max_length=32)  # read with changed_at >= since: that index serves
    rule_id: str | None = Field(default=None, max_length=32)
    home_store: str | None = Field(default=None, max_length=32)
    changed_at: datetime = Field(default_factory=utcnow, index=True)

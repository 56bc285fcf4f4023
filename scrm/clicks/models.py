"""Tables of the click write-behind.

``click_visitor_state`` is the memory of the unique-click rule between flushes: per link code and
visitor, when their last counted click was (:func:`scrm.clicks.counting.count_clicks` takes it as
``last_counted`` and hands back the entries a batch moved). One row per (code, visitor) ever
counted; rows older than the window no longer change any decision and may be pruned.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import Table
from sqlmodel import Field, SQLModel


class ClickVisitorState(SQLModel, table=True):
    __tablename__ = "click_visitor_state"
    __table__: ClassVar[Table]

    code: str = Field(primary_key=True, max_length=24)
    visitor: str = Field(primary_key=True, max_length=160)
    last_counted_at: datetime

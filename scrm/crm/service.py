"""Building and reading follow-up records (contract: the signatures below are what the CLI, the
workers and the pages call; the bodies are filled in by the owner of the follow-up builder)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from scrm.config import CrmSettings
from scrm.crm.models import FollowUp


@dataclass(frozen=True)
class RecordView:
    """A follow-up record as a rep reads it: the built record with their edit applied."""

    record: FollowUp  # as built (never changed by an edit)
    first_question: str  # these four: the built value, or the rep's correction
    last_reply: str
    open_questions: list[dict[str, Any]]
    next_step: str
    note: str = ""  # the rep's note, "" when none
    corrected: frozenset[str] = frozenset()  # names of the fields a rep corrected
    edited_by: str | None = None
    edited_at: dt.datetime | None = None


@dataclass
class RebuildReport:
    customers: int = 0  # customers rebuilt
    records: int = 0  # records they have now
    created: int = 0  # records new since the last build
    removed: int = 0  # records gone (sessions merged or all messages recalled)
    events: int = 0  # service-quality events written
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # ids given with no messages


class EditRefused(Exception):
    """The edit names no record of this customer, or a field that cannot be corrected (Chinese message)."""


def rebuild_customers(engine: Engine, external_userids: Iterable[str], *, now: dt.datetime,
                      settings: CrmSettings, tz: dt.tzinfo, rules_dir=None) -> RebuildReport:
    """Rebuild the records and service events of these customers from their messages (idempotent:
    a rebuild with nothing new writes nothing). ``rules_dir`` None: ``settings.rules_dir``."""
    raise NotImplementedError


def rebuild_all(engine: Engine, *, now: dt.datetime, settings: CrmSettings, tz: dt.tzinfo,
                rules_dir=None, batch: int | None = None, progress=None) -> RebuildReport:
    """Every customer with messages, in batches (``progress(done, total)`` after each)."""
    raise NotImplementedError


def records_for(engine: Engine, external_userid: str, *, limit: int = 50, offset: int = 0) -> list[RecordView]:
    """A customer's records, newest first, with edits applied."""
    raise NotImplementedError


def latest_records(engine: Engine, external_userids: Iterable[str]) -> dict[str, RecordView]:
    """Each customer's newest record with edits applied (the rep's customer list)."""
    raise NotImplementedError


def save_edit(engine: Engine, *, external_userid: str, record_id: int, editor: str, now: dt.datetime,
              note: str | None = None, corrections: dict[str, Any] | None = None) -> RecordView:
    """Keep a rep's note and/or corrections (fields: first_question, last_reply, open_questions,
    next_step) on a record; a later rebuild keeps them. Raises EditRefused."""
    raise NotImplementedError

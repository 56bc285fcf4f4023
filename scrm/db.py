"""The one place database engines and sessions come from.

SQLite (the embedded default) gets WAL and a busy timeout so the web process, workers and the
relay can write at once; PostgreSQL is used as given by URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import overload

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

# Named constraints so Alembic can alter them (SQLite batch mode needs names).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# What the domain functions take to open a session: ``lambda: Session(engine, expire_on_commit=False)``.
SessionFactory = Callable[[], Session]

_engines: dict[str, Engine] = {}
WORKER_POOL_SIZE = 24
_lock = threading.Lock()


def utcnow() -> datetime:
    """Aware UTC: SQLModel's datetime columns store and return UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as aware UTC: SQLite hands datetimes back naive (they were written as UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_unix(value) -> datetime | None:
    """WeCom's integer timestamps (create_time, join_time, ...) as aware UTC; 0/None stays None."""
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A worker process runs up to WORKER_POOL_SIZE threads each holding one connection at a time
    # (`scrm worker --threads`); connections open lazily, so an idle pool costs nothing.
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=WORKER_POOL_SIZE, max_overflow=16)


def get_engine(url: str | None = None) -> Engine:
    """Process-wide engine per URL (default: from settings)."""
    if url is None:
        from scrm.config import get_settings

        settings = get_settings()
        url = settings.database_url()
        echo = settings.database.echo
    else:
        echo = False
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, echo=echo)
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def migrate(url: str) -> int:
    """Bring the schema to the newest Alembic revision; returns how many migrations ran (0: the
    schema was already current), so callers can say so in one line."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(url)
    script = ScriptDirectory.from_config(cfg)
    before = _current_revision(url)
    command.upgrade(cfg, "head")
    head = script.get_current_head()
    if before == head:
        return 0
    return sum(1 for _ in script.iterate_revisions(head, before or "base"))


def _current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg

"""Shared fixtures: a real redis-server, SQLite or PostgreSQL databases, and a wired pipeline.

PostgreSQL comes from SCRM_TEST_POSTGRES_URL (``.ci/run`` starts one). Without it the PostgreSQL
variants skip locally; with SCRM_REQUIRE_SERVICES=1 (CI) a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

import scrm.models  # noqa: F401
from scrm.db import make_engine
from scrm.redisserver import RedisServer

REQUIRE = os.environ.get("SCRM_REQUIRE_SERVICES") == "1"


class Clock:
    """A settable clock for code that takes ``clock=`` (token expiry, welcome-code windows)."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    import redis

    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    return redis_server.url


def _postgres_url() -> str | None:
    url = os.environ.get("SCRM_TEST_POSTGRES_URL")
    if not url:
        if REQUIRE:
            pytest.fail("SCRM_TEST_POSTGRES_URL is not set but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("no PostgreSQL (set SCRM_TEST_POSTGRES_URL)")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, migrated database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'scrm.db'}"
        yield url
        return
    with fresh_postgres_database() as url:
        yield url


@contextmanager
def fresh_postgres_database(prefix: str = "scrm_test"):
    """A new, empty PostgreSQL database on SCRM_TEST_POSTGRES_URL's server, dropped afterwards."""
    base = _postgres_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        from scrm.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    from scrm.db import migrate

    migrate(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    SQLModel.metadata.create_all(eng)
    yield eng
    eng.dispose()

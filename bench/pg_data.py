"""What the PostgreSQL benches share: a dedicated database they can keep between runs (``--reuse``),
recognised by a marker of the sizes it was generated with, and bulk loading with COPY."""

from __future__ import annotations

import datetime as dt
import io

import sqlalchemy as sa


def ts(t: dt.datetime) -> str:
    """A UTC time as COPY's text format reads it."""
    return t.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def copy_lines(raw, table: str, columns: list[str], lines: list[str]) -> None:
    """COPY tab-separated ``lines`` into ``table`` over a psycopg connection, 100,000 at a time."""
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        buf = io.StringIO()
        for i, line in enumerate(lines, 1):
            buf.write(line)
            if i % 100_000 == 0:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())


def bench_database(server_url: str, db_name: str, marker: str, *, reuse: bool) -> tuple[str, bool]:
    """The URL of ``db_name`` on ``server_url``'s server, and whether its data is reused: only with
    ``reuse`` and when it was generated with the same ``marker``; otherwise it is created empty."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    url = sa.engine.make_url(server_url).set(database=db_name).render_as_string(hide_password=False)
    reused = False
    with admin.connect() as conn:
        if reuse and conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": db_name}).first():
            probe = sa.create_engine(url)
            with probe.connect() as pc:
                reused = pc.execute(sa.text("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                            "WHERE datname = current_database()")).scalar() == marker
            probe.dispose()
        if not reused:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    admin.dispose()
    return url, reused


def mark_database(engine, db_name: str, marker: str) -> None:
    """Record what the data was generated with, for a later ``--reuse``."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"COMMENT ON DATABASE \"{db_name}\" IS '{marker}'"))

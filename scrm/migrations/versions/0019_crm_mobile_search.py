"""crm: trigram indexes for searching by part of a mobile number (PostgreSQL only)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30 16:50:00

A rep types ``8000`` or ``138 0013``: the pages search ``LIKE '%…%'`` in ``customer_mobiles.mobile``
and ``crm_messages.mobile``, which a btree index cannot serve. ``pg_trgm``'s GIN indexes can
(about 0.9 s → 0.2 s at 1M messages). ``pg_trgm`` is a trusted extension (PostgreSQL 13+: the
database owner may create it); where it cannot be created the search still works, unindexed, and
the migration says so instead of failing. The indexes are not in the models: SQLite has no
trigram index (tests/test_schema_and_cli.py leaves ``*_trgm`` indexes out of its comparison).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (("ix_crm_messages_mobile_trgm", "crm_messages"), ("ix_customer_mobiles_mobile_trgm", "customer_mobiles"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    with bind.begin_nested() as savepoint:
        try:
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except sa.exc.DBAPIError as exc:
            savepoint.rollback()
            print(f"warning: pg_trgm is not available ({type(exc.orig).__name__}): searching by part of a mobile "
                  "works without an index (slower); ask the database administrator to `CREATE EXTENSION "
                  "pg_trgm` and run `scrm init` again")
            return
    for name, table in INDEXES:
        bind.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin (mobile gin_trgm_ops)"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for name, _ in INDEXES:
        bind.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))

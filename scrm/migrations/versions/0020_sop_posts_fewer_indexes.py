"""sop: fewer indexes on sop_posts (the day's first plan inserts 300,000 rows)

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30 20:00:00

Every index is kept up to date on each insert, and writing the day's first plan for 100,000 groups
spent most of its time there (bench/sop_plan.py --write). ``chat_id`` needs no index of its own (the
three unique constraints start with it), ``audience`` has two values, and ``msgid`` is NULL on every
planned row: it becomes a partial index over the rows that have one.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_MSGID = sa.text("msgid IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_sop_posts_chat_id", table_name="sop_posts")
    op.drop_index("ix_sop_posts_audience", table_name="sop_posts")
    op.drop_index("ix_sop_posts_msgid", table_name="sop_posts")
    op.create_index("ix_sop_posts_msgid", "sop_posts", ["msgid"], postgresql_where=HAS_MSGID,
                    sqlite_where=HAS_MSGID)


def downgrade() -> None:
    op.drop_index("ix_sop_posts_msgid", table_name="sop_posts")
    op.create_index("ix_sop_posts_msgid", "sop_posts", ["msgid"])
    op.create_index("ix_sop_posts_audience", "sop_posts", ["audience"])
    op.create_index("ix_sop_posts_chat_id", "sop_posts", ["chat_id"])

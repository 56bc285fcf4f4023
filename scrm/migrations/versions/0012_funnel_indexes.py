"""Indexes the store funnel reads by day: follow relations added, churn alerts, group joins and leaves

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 10:10:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("follow_relations", "added_at"),
    ("churn_alerts", "occurred_at"),
    ("group_members", "joined_at"),
    ("group_members", "left_at"),
]


def upgrade() -> None:
    for table, column in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))

"""layer journeys

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 12:45:00

Placeholder: filled in by the owner of this part of issue 13 (keep revision ids as they are).
"""
from collections.abc import Sequence

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

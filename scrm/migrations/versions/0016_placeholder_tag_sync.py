"""tag sync: the rule tags scrm owns in WeCom and the marks it applied

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 12:45:00

Placeholder: filled in by the owner of this part of issue 13 (keep revision ids as they are).
"""
from collections.abc import Sequence

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

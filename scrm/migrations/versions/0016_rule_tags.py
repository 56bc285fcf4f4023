"""tag sync: the rule tags scrm owns in WeCom and the marks it applied

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 12:45:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _s(n: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table('rule_tags',
    sa.Column('key', _s(96), nullable=False),
    sa.Column('tag_id', _s(64), nullable=False),
    sa.Column('name', _s(64), nullable=False),
    sa.Column('rule_name', _s(64), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_rule_tags')),
    sa.UniqueConstraint('tag_id', name=op.f('uq_rule_tags_tag_id')),
    )
    op.create_table('rule_tag_marks',
    sa.Column('userid', _s(64), nullable=False),
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('key', _s(96), nullable=False),
    sa.Column('tag_id', _s(64), nullable=False),
    sa.Column('marked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('removed_by_hand_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('userid', 'external_userid', 'key', name=op.f('pk_rule_tag_marks')),
    )
    op.create_index('ix_rule_tag_marks_external_userid', 'rule_tag_marks', ['external_userid'])
    op.create_index('ix_rule_tag_marks_tag_id', 'rule_tag_marks', ['tag_id'])
    op.create_table('rule_tag_failures',
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('userid', _s(64), nullable=False),
    sa.Column('errcode', sa.Integer(), nullable=False),
    sa.Column('error', _s(500), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('failed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('external_userid', name=op.f('pk_rule_tag_failures')),
    )
    op.create_index('ix_rule_tag_failures_failed_at', 'rule_tag_failures', ['failed_at'])


def downgrade() -> None:
    op.drop_table('rule_tag_failures')
    op.drop_table('rule_tag_marks')
    op.drop_table('rule_tags')

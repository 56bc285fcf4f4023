"""Customer layers, layer history, and the SOP ledger's audience (1:1 journey messages)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 12:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _s(n: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def upgrade() -> None:
    op.create_table('customer_layers',
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('layer', _s(32), nullable=False),
    sa.Column('rule_id', _s(32), nullable=True),
    sa.Column('home_store', _s(32), nullable=True),
    sa.Column('tag_bits', sa.BigInteger(), nullable=False),
    sa.Column('since', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('computed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('tags_dirty', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('external_userid'),
    )
    op.create_index('ix_customer_layers_tags_dirty', 'customer_layers', ['tags_dirty'])
    op.create_index('ix_customer_layers_home_store_layer', 'customer_layers', ['home_store', 'layer'])
    op.create_table('layer_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('from_layer', _s(32), nullable=True),
    sa.Column('to_layer', _s(32), nullable=False),
    sa.Column('rule_id', _s(32), nullable=True),
    sa.Column('home_store', _s(32), nullable=True),
    sa.Column('changed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_layer_changes_external_userid', 'layer_changes', ['external_userid'])
    op.create_index('ix_layer_changes_changed_at', 'layer_changes', ['changed_at'])
    op.create_index('ix_layer_changes_store_changed_at', 'layer_changes', ['home_store', 'changed_at'])
    with op.batch_alter_table('sop_posts') as batch:
        batch.add_column(sa.Column('audience', _s(8), server_default='group', nullable=False))
        batch.create_index('ix_sop_posts_audience', ['audience'])


def downgrade() -> None:
    with op.batch_alter_table('sop_posts') as batch:
        batch.drop_index('ix_sop_posts_audience')
        batch.drop_column('audience')
    op.drop_table('layer_changes')
    op.drop_table('customer_layers')

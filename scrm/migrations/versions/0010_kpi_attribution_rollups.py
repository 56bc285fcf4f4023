"""Order attribution and the dashboard's rollups

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 09:00:00

Tables start empty: the first ``scrm kpi refresh`` (or the scheduler) rolls up everything already
recorded, since every watermark starts at 0.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key() -> list[sa.Column]:
    """The rollup key columns (fresh objects: a Column belongs to one table)."""
    return [
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('post_id', sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table('kpi_buyer_days',
    sa.Column('id', sa.Integer(), nullable=False),
    *_key(),
    sa.Column('buyer', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('gmv_fen', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kpi_buyer_days')),
    sa.UniqueConstraint('day', 'store_code', 'chat_id', 'template_id', 'post_id', 'buyer',
                        name='uq_kpi_buyer_days_key')
    )
    op.create_index('ix_kpi_buyer_days_chat_id_day', 'kpi_buyer_days', ['chat_id', 'day'], unique=False)
    op.create_index('ix_kpi_buyer_days_post_id', 'kpi_buyer_days', ['post_id'], unique=False)
    op.create_index('ix_kpi_buyer_days_store_code_day', 'kpi_buyer_days', ['store_code', 'day'], unique=False)
    op.create_index('ix_kpi_buyer_days_template_id_day', 'kpi_buyer_days', ['template_id', 'day'], unique=False)
    op.create_table('kpi_daily',
    sa.Column('id', sa.Integer(), nullable=False),
    *_key(),
    sa.Column('posts_delivered', sa.Integer(), nullable=False),
    sa.Column('members_reached', sa.Integer(), nullable=False),
    sa.Column('clicks', sa.Integer(), nullable=False),
    sa.Column('unique_clicks', sa.Integer(), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('gmv_fen', sa.BigInteger(), nullable=False),
    sa.Column('refunds_fen', sa.BigInteger(), nullable=False),
    sa.Column('refunded_orders', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kpi_daily')),
    sa.UniqueConstraint('day', 'store_code', 'chat_id', 'template_id', 'post_id', name='uq_kpi_daily_key')
    )
    op.create_index('ix_kpi_daily_chat_id_day', 'kpi_daily', ['chat_id', 'day'], unique=False)
    op.create_index('ix_kpi_daily_post_id', 'kpi_daily', ['post_id'], unique=False)
    op.create_index('ix_kpi_daily_store_code_day', 'kpi_daily', ['store_code', 'day'], unique=False)
    op.create_index('ix_kpi_daily_template_id_day', 'kpi_daily', ['template_id', 'day'], unique=False)
    op.create_table('kpi_post_deliveries',
    sa.Column('post_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('members', sa.Integer(), nullable=False),
    sa.Column('delivered_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('post_id', name=op.f('pk_kpi_post_deliveries'))
    )
    op.create_index(op.f('ix_kpi_post_deliveries_day'), 'kpi_post_deliveries', ['day'], unique=False)
    op.create_table('kpi_refunds_applied',
    sa.Column('refund_pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('order_pk', sa.Integer(), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('refund_pk', name=op.f('pk_kpi_refunds_applied'))
    )
    op.create_index(op.f('ix_kpi_refunds_applied_order_pk'), 'kpi_refunds_applied', ['order_pk'], unique=False)
    op.create_table('kpi_watermarks',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_kpi_watermarks'))
    )
    op.create_table('order_attributions',
    sa.Column('order_pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('rule', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('post_id', sa.Integer(), nullable=True),
    sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('link_code', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=True),
    sa.Column('click_id', sa.Integer(), nullable=True),
    sa.Column('click_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('paid_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('refunded_fen', sa.BigInteger(), nullable=False),
    sa.Column('buyer', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('order_pk', name=op.f('pk_order_attributions'))
    )
    op.create_index('ix_order_attributions_day_paid_at', 'order_attributions', ['day', 'paid_at'], unique=False)
    op.create_index('ix_order_attributions_store_code_day', 'order_attributions', ['store_code', 'day'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_order_attributions_store_code_day', table_name='order_attributions')
    op.drop_index('ix_order_attributions_day_paid_at', table_name='order_attributions')
    op.drop_table('order_attributions')
    op.drop_table('kpi_watermarks')
    op.drop_index(op.f('ix_kpi_refunds_applied_order_pk'), table_name='kpi_refunds_applied')
    op.drop_table('kpi_refunds_applied')
    op.drop_index(op.f('ix_kpi_post_deliveries_day'), table_name='kpi_post_deliveries')
    op.drop_table('kpi_post_deliveries')
    op.drop_index('ix_kpi_daily_template_id_day', table_name='kpi_daily')
    op.drop_index('ix_kpi_daily_store_code_day', table_name='kpi_daily')
    op.drop_index('ix_kpi_daily_post_id', table_name='kpi_daily')
    op.drop_index('ix_kpi_daily_chat_id_day', table_name='kpi_daily')
    op.drop_table('kpi_daily')
    op.drop_index('ix_kpi_buyer_days_template_id_day', table_name='kpi_buyer_days')
    op.drop_index('ix_kpi_buyer_days_store_code_day', table_name='kpi_buyer_days')
    op.drop_index('ix_kpi_buyer_days_post_id', table_name='kpi_buyer_days')
    op.drop_index('ix_kpi_buyer_days_chat_id_day', table_name='kpi_buyer_days')
    op.drop_table('kpi_buyer_days')

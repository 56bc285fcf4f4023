"""Coarser KPI rollups for the all-store dashboard queries

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 10:20:00

``kpi_daily`` summed per day × store, day × template and day × store × group. They are filled here
from ``kpi_daily`` (inside the migration's transaction, after taking the refresh lock row), so the
dashboard reads the same figures at once; from then on ``refresh_rollups`` adds to them with every
delta it adds to ``kpi_daily``.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_METRICS = ('posts_delivered', 'members_reached', 'clicks', 'unique_clicks', 'orders', 'gmv_fen', 'refunds_fen',
            'refunded_orders')


def _metrics() -> list[sa.Column]:
    big = {'gmv_fen', 'refunds_fen'}
    return [sa.Column(m, sa.BigInteger() if m in big else sa.Integer(), nullable=False) for m in _METRICS]


def _store() -> sa.Column:
    return sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False)


def _backfill(table: str, cols: Sequence[str]) -> None:
    keys = ', '.join(cols)
    sums = ', '.join(f'sum({m})' for m in _METRICS)
    op.execute(f"INSERT INTO {table} ({keys}, {', '.join(_METRICS)}) "
               f"SELECT {keys}, {sums} FROM kpi_daily GROUP BY {keys}")


def upgrade() -> None:
    op.create_table('kpi_daily_stores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    _store(),
    *_metrics(),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kpi_daily_stores')),
    sa.UniqueConstraint('day', 'store_code', name='uq_kpi_daily_stores_key')
    )
    op.create_index('ix_kpi_daily_stores_store_code_day', 'kpi_daily_stores', ['store_code', 'day'], unique=False)
    op.create_table('kpi_daily_templates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('template_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    *_metrics(),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kpi_daily_templates')),
    sa.UniqueConstraint('day', 'template_id', name='uq_kpi_daily_templates_key')
    )
    op.create_index('ix_kpi_daily_templates_template_id_day', 'kpi_daily_templates', ['template_id', 'day'],
                    unique=False)
    op.create_table('kpi_daily_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    _store(),
    sa.Column('chat_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    *_metrics(),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kpi_daily_groups')),
    sa.UniqueConstraint('day', 'store_code', 'chat_id', name='uq_kpi_daily_groups_key')
    )
    op.create_index('ix_kpi_daily_groups_chat_id_day', 'kpi_daily_groups', ['chat_id', 'day'], unique=False)
    op.create_index('ix_kpi_daily_groups_store_code_day', 'kpi_daily_groups', ['store_code', 'day'], unique=False)
    # A refresh running meanwhile (old code) would add to kpi_daily only: take its lock row first.
    op.execute("UPDATE kpi_watermarks SET holder = 'migration 0013' WHERE name = 'lock'")
    _backfill('kpi_daily_stores', ('day', 'store_code'))
    _backfill('kpi_daily_templates', ('day', 'template_id'))
    _backfill('kpi_daily_groups', ('day', 'store_code', 'chat_id'))


def downgrade() -> None:
    op.drop_index('ix_kpi_daily_groups_store_code_day', table_name='kpi_daily_groups')
    op.drop_index('ix_kpi_daily_groups_chat_id_day', table_name='kpi_daily_groups')
    op.drop_table('kpi_daily_groups')
    op.drop_index('ix_kpi_daily_templates_template_id_day', table_name='kpi_daily_templates')
    op.drop_table('kpi_daily_templates')
    op.drop_index('ix_kpi_daily_stores_store_code_day', table_name='kpi_daily_stores')
    op.drop_table('kpi_daily_stores')

"""Store funnel and owner compliance rollups by day

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:20:00

Tables start empty; store_funnel and owner_compliance read the raw tables until the first
``refresh_funnel_rollups`` fills them (scrm.kpi.funnel_rollups).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _s(n: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def _day_table(name: str, keys: list[sa.Column], figures: list[str]) -> None:
    op.create_table(name,
    sa.Column('day', sa.Date(), nullable=False),
    *keys,
    *[sa.Column(f, sa.Integer(), nullable=False) for f in figures],
    sa.PrimaryKeyConstraint('day', *[k.name for k in keys], name=op.f(f'pk_{name}'))
    )
    op.create_index(f'ix_{name}_store_code_day', name, ['store_code', 'day'], unique=False)


def upgrade() -> None:
    _day_table('kpi_funnel_staff_days', [sa.Column('store_code', _s(32), nullable=False),
                                         sa.Column('userid', _s(64), nullable=False)],
               ['scans', 'new_customers'])
    _day_table('kpi_funnel_store_days', [sa.Column('store_code', _s(32), nullable=False)],
               ['group_joins', 'group_leaves'])
    _day_table('kpi_funnel_churn_days', [sa.Column('store_code', _s(32), nullable=False),
                                         sa.Column('external_userid', _s(64), nullable=False)], [])
    _day_table('kpi_compliance_days', [sa.Column('sender', _s(64), nullable=False),
                                       sa.Column('store_code', _s(32), nullable=False)],
               ['due', 'sent_on_time', 'expired', 'over_quota', 'unconfirmed'])
    op.create_table('kpi_funnel_group_sizes',
    sa.Column('chat_id', _s(64), nullable=False),
    sa.Column('store_code', _s(32), nullable=False),
    sa.Column('members', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('chat_id', name=op.f('pk_kpi_funnel_group_sizes'))
    )
    op.create_index('ix_kpi_funnel_group_sizes_store_code', 'kpi_funnel_group_sizes', ['store_code'], unique=False)
    op.create_table('kpi_funnel_rollup_state',
    sa.Column('name', _s(16), nullable=False),
    sa.Column('tz', _s(64), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=True),
    sa.Column('through', sa.Date(), nullable=True),
    sa.Column('as_of', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_kpi_funnel_rollup_state'))
    )


def downgrade() -> None:
    op.drop_table('kpi_funnel_rollup_state')
    op.drop_index('ix_kpi_funnel_group_sizes_store_code', table_name='kpi_funnel_group_sizes')
    op.drop_table('kpi_funnel_group_sizes')
    for name in ('kpi_compliance_days', 'kpi_funnel_churn_days', 'kpi_funnel_store_days', 'kpi_funnel_staff_days'):
        op.drop_index(f'ix_{name}_store_code_day', table_name=name)
        op.drop_table(name)

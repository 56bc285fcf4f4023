"""Tracked-link clicks recorded through the write-behind: visitor, agent, counted

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:00:00

Clicks recorded before this revision were each counted by the old ``/t/`` (every hit was a click),
so they become person clicks that counted, with their id as event id and an empty visitor; the
links' ``unique_clicks`` start at their ``clicks`` (the old count is all that is known).
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('click_visitor_state',
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
    sa.Column('visitor', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False),
    sa.Column('last_counted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('code', 'visitor', name=op.f('pk_click_visitor_state'))
    )

    with op.batch_alter_table('link_clicks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column('visitor', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('agent', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
                                      server_default='person'))
        batch_op.add_column(sa.Column('agent_reason', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=True))
        batch_op.add_column(sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                                      server_default='counted'))
        batch_op.add_column(sa.Column('counted', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('external_userid', sqlmodel.sql.sqltypes.AutoString(length=128),
                                      nullable=True))
    op.execute("UPDATE link_clicks SET event_id = CAST(id AS VARCHAR(32)) WHERE event_id IS NULL")
    with op.batch_alter_table('link_clicks', schema=None) as batch_op:
        batch_op.alter_column('event_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=32),
                              nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_link_clicks_event_id'), ['event_id'])
        batch_op.drop_index(batch_op.f('ix_link_clicks_code'))
        batch_op.create_index('ix_link_clicks_code_clicked_at', ['code', 'clicked_at'], unique=False)
        batch_op.create_index('ix_link_clicks_external_userid_clicked_at', ['external_userid', 'clicked_at'],
                              unique=False)

    with op.batch_alter_table('tracked_links', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unique_clicks', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE tracked_links SET unique_clicks = clicks")


def downgrade() -> None:
    with op.batch_alter_table('tracked_links', schema=None) as batch_op:
        batch_op.drop_column('unique_clicks')

    with op.batch_alter_table('link_clicks', schema=None) as batch_op:
        batch_op.drop_index('ix_link_clicks_external_userid_clicked_at')
        batch_op.drop_index('ix_link_clicks_code_clicked_at')
        batch_op.create_index(batch_op.f('ix_link_clicks_code'), ['code'], unique=False)
        batch_op.drop_constraint(batch_op.f('uq_link_clicks_event_id'), type_='unique')
        batch_op.drop_column('external_userid')
        batch_op.drop_column('counted')
        batch_op.drop_column('reason')
        batch_op.drop_column('agent_reason')
        batch_op.drop_column('agent')
        batch_op.drop_column('visitor')
        batch_op.drop_column('event_id')

    op.drop_table('click_visitor_state')

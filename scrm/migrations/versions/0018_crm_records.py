"""crm: messages, follow-up records, reps' edits, service-quality events

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30 15:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _s(n: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def _t() -> sqlmodel.sql.sqltypes.UTCDateTime:
    return sqlmodel.sql.sqltypes.UTCDateTime()


def upgrade() -> None:
    op.create_table('crm_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', _s(8), nullable=False),
    sa.Column('source_id', _s(128), nullable=False),
    sa.Column('external_userid', _s(64), nullable=True),
    sa.Column('mobile', _s(16), nullable=True),
    sa.Column('userid', _s(64), nullable=True),
    sa.Column('direction', _s(4), nullable=False),
    sa.Column('sent_at', _t(), nullable=False),
    sa.Column('msgtype', _s(32), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('roomid', _s(64), nullable=True),
    sa.Column('duration_seconds', sa.Integer(), nullable=True),
    sa.Column('revoked_at', _t(), nullable=True),
    sa.Column('created_at', _t(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crm_messages')),
    sa.UniqueConstraint('channel', 'source_id', name=op.f('uq_crm_messages_channel_source_id')),
    )
    op.create_index('ix_crm_messages_customer_sent_at', 'crm_messages', ['external_userid', 'sent_at'])
    op.create_index(op.f('ix_crm_messages_mobile'), 'crm_messages', ['mobile'])
    op.create_index(op.f('ix_crm_messages_userid'), 'crm_messages', ['userid'])
    op.create_index(op.f('ix_crm_messages_sent_at'), 'crm_messages', ['sent_at'])
    op.create_table('crm_followups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('first_message_id', sa.Integer(), nullable=False),
    sa.Column('last_message_id', sa.Integer(), nullable=False),
    sa.Column('started_at', _t(), nullable=False),
    sa.Column('ended_at', _t(), nullable=False),
    sa.Column('userid', _s(64), nullable=True),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('message_count', sa.Integer(), nullable=False),
    sa.Column('first_question', sa.Text(), nullable=False),
    sa.Column('first_question_message_id', sa.Integer(), nullable=True),
    sa.Column('last_reply', sa.Text(), nullable=False),
    sa.Column('last_reply_message_id', sa.Integer(), nullable=True),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('open_questions', sa.JSON(), nullable=False),
    sa.Column('next_step', _s(512), nullable=False),
    sa.Column('next_step_rule', _s(64), nullable=True),
    sa.Column('built_at', _t(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crm_followups')),
    sa.UniqueConstraint('external_userid', 'first_message_id',
                        name=op.f('uq_crm_followups_external_userid_first_message_id')),
    )
    op.create_index(op.f('ix_crm_followups_external_userid'), 'crm_followups', ['external_userid'])
    op.create_index(op.f('ix_crm_followups_started_at'), 'crm_followups', ['started_at'])
    op.create_index(op.f('ix_crm_followups_userid'), 'crm_followups', ['userid'])
    op.create_table('crm_followup_edits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('anchor_message_id', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('corrections', sa.JSON(), nullable=False),
    sa.Column('userid', _s(64), nullable=False),
    sa.Column('updated_at', _t(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crm_followup_edits')),
    sa.UniqueConstraint('external_userid', 'anchor_message_id',
                        name=op.f('uq_crm_followup_edits_external_userid_anchor_message_id')),
    )
    op.create_index(op.f('ix_crm_followup_edits_external_userid'), 'crm_followup_edits', ['external_userid'])
    op.create_table('crm_service_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_userid', _s(64), nullable=False),
    sa.Column('userid', _s(64), nullable=True),
    sa.Column('store_code', _s(32), nullable=True),
    sa.Column('kind', _s(16), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('occurred_at', _t(), nullable=False),
    sa.Column('replied_at', _t(), nullable=True),
    sa.Column('business_seconds', sa.Integer(), nullable=True),
    sa.Column('rule_id', _s(64), nullable=True),
    sa.Column('phrase', _s(128), nullable=True),
    sa.Column('excerpt', _s(200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crm_service_events')),
    )
    op.create_index(op.f('ix_crm_service_events_external_userid'), 'crm_service_events', ['external_userid'])
    op.create_index('ix_crm_service_events_userid_occurred_at', 'crm_service_events', ['userid', 'occurred_at'])
    op.create_index('ix_crm_service_events_store_occurred_at', 'crm_service_events', ['store_code', 'occurred_at'])


def downgrade() -> None:
    op.drop_table('crm_service_events')
    op.drop_table('crm_followup_edits')
    op.drop_table('crm_followups')
    op.drop_table('crm_messages')

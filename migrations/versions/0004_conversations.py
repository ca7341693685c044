"""conversations: read state per message, 2,000-character bodies, blocks, dismissed exports

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 14:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('read_at', sa.DateTime(), nullable=True))
        batch_op.alter_column('body', existing_type=sa.String(length=140), type_=sa.String(length=2000))
        batch_op.create_index('ix_message_pair', ['sender_id', 'recipient_id', 'id'], unique=False)
        batch_op.create_index('ix_message_unread', ['recipient_id', 'read_at'], unique=False)
    # What the old inbox had marked read (everything up to the user's last visit) stays read.
    op.execute(
        'UPDATE message SET read_at = (SELECT u.last_message_read_time FROM "user" u '
        'WHERE u.id = message.recipient_id) '
        'WHERE timestamp <= (SELECT u.last_message_read_time FROM "user" u WHERE u.id = message.recipient_id)'
    )
    op.create_table('block',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocker_id', sa.Integer(), nullable=False),
    sa.Column('blocked_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['blocked_id'], ['user.id'], name=op.f('fk_block_blocked_id_user')),
    sa.ForeignKeyConstraint(['blocker_id'], ['user.id'], name=op.f('fk_block_blocker_id_user')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_block')),
    sa.UniqueConstraint('blocker_id', 'blocked_id', name=op.f('uq_block_blocker_id'))
    )
    with op.batch_alter_table('block', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_block_blocker_id'), ['blocker_id'], unique=False)
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dismissed', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('dismissed')
    with op.batch_alter_table('block', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_block_blocker_id'))
    op.drop_table('block')
    op.execute("UPDATE message SET body = substr(body, 1, 140) WHERE length(body) > 140")
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_unread')
        batch_op.drop_index('ix_message_pair')
        batch_op.alter_column('body', existing_type=sa.String(length=2000), type_=sa.String(length=140))
        batch_op.drop_column('read_at')

"""logins expire: when each was last used

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 06:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('login', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('login', schema=None) as batch_op:
        batch_op.drop_column('last_used_at')

"""One message per client message id and ticket: a unique index, so that concurrent retries of
a follow-up store it once. Duplicates stored before keep their text; all but the first lose the
client id (NULLs never collide). The downgrade drops the index only: the ids cleared here are
not kept anywhere, so those duplicates stay without one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE ticket_messages SET client_message_id = NULL "
        "WHERE client_message_id IS NOT NULL AND id > ("
        "SELECT MIN(earlier.id) FROM ticket_messages AS earlier "
        "WHERE earlier.ticket_id = ticket_messages.ticket_id "
        "AND earlier.client_message_id = ticket_messages.client_message_id)"
    )
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ux_ticket_messages_client_id", ["ticket_id", "client_message_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.drop_index("ux_ticket_messages_client_id")

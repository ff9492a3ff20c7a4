"""The ticket store: teams, handlers, tickets, their messages and events, agents' feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("escalation_team_id", sa.String(length=64), nullable=True),
        sa.Column("supervisor_id", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "handlers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("on_duty", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, comment="listed in the routing file"),
        sa.Column("last_assigned_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("handlers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handlers_team_id"), ["team_id"], unique=False)

    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.String(length=200), nullable=True),
        sa.Column("customer_tier", sa.String(length=50), nullable=True),
        sa.Column("channel", sa.String(length=50), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("handler_id", sa.String(length=64), nullable=True),
        sa.Column("skill", sa.String(length=64), nullable=True),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("route_reason", sa.Text(), nullable=False),
        sa.Column("assignment_reason", sa.Text(), nullable=False),
        sa.Column("notify", sa.JSON(), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("sentiment", sa.String(length=32), nullable=False),
        sa.Column("urgency", sa.String(length=8), nullable=False),
        sa.Column("is_complaint", sa.Boolean(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("linked_ticket_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("first_response_due_at", sa.DateTime(), nullable=False),
        sa.Column("resolution_due_at", sa.DateTime(), nullable=False),
        sa.Column("first_responded_at", sa.DateTime(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["handler_id"],
            ["handlers.id"],
        ),
        sa.ForeignKeyConstraint(
            ["linked_ticket_id"],
            ["tickets.id"],
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tickets_customer_created", ["customer_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_tickets_handler_status", ["handler_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_status"), ["status"], unique=False)
        batch_op.create_index("ix_tickets_team_status", ["team_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tickets_urgency"), ["urgency"], unique=False)

    op.create_table(
        "ticket_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ticket_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_events_ticket_id"), ["ticket_id"], unique=False)

    op.create_table(
        "ticket_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("author", sa.String(length=16), nullable=False, comment="customer or agent"),
        sa.Column("author_id", sa.String(length=200), nullable=True),
        sa.Column("client_message_id", sa.String(length=200), nullable=True),
        sa.Column(
            "kind", sa.String(length=32), nullable=False, comment="opening, follow-up kind or reply"
        ),
        sa.Column("masked_text", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True, comment="the triage result, as JSON"),
        sa.Column("explanation", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ticket_messages_ticket_id"), ["ticket_id"], unique=False
        )

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False, comment="all labels after the correction"),
        sa.Column("corrected", sa.JSON(), nullable=False, comment="the labels the agent changed"),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["ticket_messages.id"],
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_ticket_id"), ["ticket_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_ticket_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_message_id"))

    op.drop_table("feedback")
    with op.batch_alter_table("ticket_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_messages_ticket_id"))

    op.drop_table("ticket_messages")
    with op.batch_alter_table("ticket_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_events_ticket_id"))

    op.drop_table("ticket_events")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tickets_urgency"))
        batch_op.drop_index("ix_tickets_team_status")
        batch_op.drop_index(batch_op.f("ix_tickets_status"))
        batch_op.drop_index("ix_tickets_handler_status")
        batch_op.drop_index("ix_tickets_customer_created")

    op.drop_table("tickets")
    with op.batch_alter_table("handlers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handlers_team_id"))

    op.drop_table("handlers")
    op.drop_table("teams")

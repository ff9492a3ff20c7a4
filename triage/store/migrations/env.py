"""Alembic environment: migrations run on the connection that ``Database.upgrade`` passes in."""

from __future__ import annotations

from alembic import context

from triage.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `triage db upgrade`, which supplies the connection")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment: runs relay's migrations on the connection it is given."""

from __future__ import annotations

from alembic import context

from relay.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("relay's migrations run through `relay db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

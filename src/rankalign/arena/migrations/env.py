"""Alembic environment of the arena: runs on the connection :func:`rankalign.arena.db.migrate` passes in."""

from alembic import context

from rankalign.arena.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the arena always passes its connection
    raise RuntimeError("run the arena migrations through rankalign.arena.db.migrate(engine)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

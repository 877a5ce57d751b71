"""Alembic environment: runs on the connection handed over by ``storage.db.migrate``."""

from alembic import context

from storage.models import Base, include_object

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()

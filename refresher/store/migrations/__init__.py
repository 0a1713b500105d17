"""Alembic migrations of the token store (applied on start by :meth:`SqlStore.open`)."""

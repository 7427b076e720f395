"""SQL storage: typed models, engine and session factory, queries, Alembic migrations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.models import Base
from db.session import make_engine


def test_migrations_create_the_schema_the_models_describe(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert {"job", "batch", "result", "model_version", "alembic_version"} <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []

"""The SQLAlchemy table definitions match what the migrations build (no silent drift)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from cardpay.postgres.schema import metadata

pytestmark = pytest.mark.integration


def test_schema_module_matches_the_migrated_database(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # Indexes and constraints that exist only for the database (partial/expression indexes, CHECKs)
    # are the migrations' business; tables, columns, types and nullability must agree.
    skipped = ("add_index", "remove_index")
    relevant = [d for d in diff if not (isinstance(d, tuple) and d[0] in skipped)]
    assert relevant == [], relevant


def test_the_comparison_sees_a_drift(pg_engine: Engine) -> None:
    """The check above can fail: a column only the module knows about is reported."""
    from sqlalchemy import Column, MetaData, Text

    drifted = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["rm_payments"].append_column(Column("not_migrated", Text))
    with pg_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), drifted)
    kinds = [d[0] for d in diff if isinstance(d, tuple) and d[0] not in ("add_index", "remove_index")]
    assert kinds == ["add_column"], diff

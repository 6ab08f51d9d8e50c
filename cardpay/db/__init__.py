"""PostgreSQL: schema, engine, migrations, and the embedded server for local runs and tests."""

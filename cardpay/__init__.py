"""The application shell: settings, wiring, CLI, Postgres schema, event store, outbox, Kafka."""

"""Sagas: durable instances, timers and the effects outbox (issue 8).

- `saga_instances`: one row per saga, its state as JSON (`sagas.engine.codec.to_json`) under an
  optimistic-concurrency `version`; `status` and `stage` are columns so people and the stuck-saga
  query (`saga_instances_by_status`) read them without decoding the state.
- `saga_timers`: one row per (saga, timer name); setting it again moves it. Workers take due
  timers by `due_at` with SKIP LOCKED and delete them in the transaction that delivers them.
- `saga_effects`: the effects outbox. A retry of the same request id is a new attempt of the same
  row (pending again); adapters poll the pending rows by name through a partial index, so the
  answered past is never scanned.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saga_instances",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("state", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("kind", "saga_id"),
        sa.CheckConstraint("version > 0", name="saga_instances_version_positive"),
    )
    op.create_index("saga_instances_by_status", "saga_instances", ["status", "updated_at"])
    op.create_table(
        "saga_timers",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "saga_id", "name"),
    )
    op.create_index("saga_timers_due", "saga_timers", ["due_at"])
    op.create_table(
        "saga_effects",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("saga_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("result", JSONB),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')",
                           name="saga_effects_status"),
    )
    op.create_index("saga_effects_pending", "saga_effects", ["name", "requested_at"],
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("saga_effects_pending", table_name="saga_effects")
    op.drop_table("saga_effects")
    op.drop_index("saga_timers_due", table_name="saga_timers")
    op.drop_table("saga_timers")
    op.drop_index("saga_instances_by_status", table_name="saga_instances")
    op.drop_table("saga_instances")

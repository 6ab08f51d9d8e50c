"""Feed identity: the Kafka topic id stored with the consumer's offsets.

A topic deleted and created again under the same name restarts at offset 0 with a new topic id;
offsets stored for the old topic would silently skip or misread events in the new one. Each
consumer records the topic (name and id) its positions belong to and refuses to resume on another.

(The partial index on unpublished outbox rows the relay and its metrics read already exists: 0001.)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_identity",
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("topic_id", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("feed_identity")

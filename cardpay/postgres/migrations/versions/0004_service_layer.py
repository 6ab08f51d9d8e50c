"""Service layer: chain-derived rows name their block, so a reorg finds them without parsing ids;
quarantined items can be resolved (retried) with the trace kept.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Claims of chain logs: the block they came from (NULL for commands from elsewhere).
    op.add_column("processed_commands", sa.Column("block_hash", sa.Text()))
    op.execute("UPDATE processed_commands SET block_hash = split_part(command_id, ':', 3) "
               "WHERE command_id LIKE 'chain:%'")
    op.create_index("processed_commands_block", "processed_commands", ["block_hash"],
                    postgresql_where=sa.text("block_hash IS NOT NULL"))
    # Expected refunds: the block of the transfer that matched them.
    op.add_column("expected_refunds", sa.Column("matched_block", sa.Text()))
    op.execute("UPDATE expected_refunds SET matched_block = split_part(matched_by, ':', 3) "
               "WHERE matched_by LIKE 'chain:%'")
    # Quarantine: the block of the log (NULL when not from a chain log), and a resolution.
    op.add_column("quarantine", sa.Column("block_hash", sa.Text()))
    op.execute("UPDATE quarantine SET block_hash = split_part(key, ':', 3) WHERE key LIKE 'chain:%'")
    op.execute("UPDATE quarantine SET block_hash = split_part(key, ':', 4) "
               "WHERE key LIKE 'duplicate:chain:%'")
    op.add_column("quarantine", sa.Column("resolved_at", sa.DateTime(timezone=True)))
    op.add_column("quarantine", sa.Column("resolution", sa.Text()))
    op.add_column("quarantine", sa.Column("attempts", sa.Integer(), nullable=False,
                                          server_default="0"))


def downgrade() -> None:
    op.drop_column("quarantine", "attempts")
    op.drop_column("quarantine", "resolution")
    op.drop_column("quarantine", "resolved_at")
    op.drop_column("quarantine", "block_hash")
    op.drop_column("expected_refunds", "matched_block")
    op.drop_index("processed_commands_block", "processed_commands")
    op.drop_column("processed_commands", "block_hash")

"""API tokens: the bearer tokens of the finance and ops API (`cardpay tokens`).

Only the SHA-256 digest of a token is kept, never the token (docs/adr/0015-api-tokens.md). The
database refuses a scope outside the known set and a digest that is not 32 bytes, so a row
written by hand cannot grant more than the code knows about.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("digest", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("cardinality(scopes) > 0 AND scopes <@ "
                           "ARRAY['finance:read', 'ops:read', 'ops:write']::text[]",
                           name="api_tokens_known_scopes"),
        sa.CheckConstraint("octet_length(digest) = 32", name="api_tokens_digest_sha256"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")

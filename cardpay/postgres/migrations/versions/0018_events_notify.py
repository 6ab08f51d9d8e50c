"""A commit that appended events wakes the PostgreSQL log feed's consumers (`NOTIFY
cardpay_events`, from a statement trigger on `events`), so a projector or saga worker idle on the
feed reads at the commit instead of at its next timed poll.

One notification per inserting statement, delivered at commit (none on rollback), merged with
the transaction's others of the same channel and payload. Its commit-time lock serializes the
notifying commits, which the events table's own EXCLUSIVE lock (held by every append until
commit) already does.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

CHANNEL = "cardpay_events"


def upgrade() -> None:
    op.execute(f"""
        CREATE FUNCTION cardpay_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER events_notify AFTER INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION cardpay_events_notify()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION cardpay_events_notify()")

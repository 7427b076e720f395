"""a job's completion webhook and its delivery state

`notify_url` is where the control plane POSTs a job once it has ended (control.notify). `notified_at` is
when a receiver answered 2xx, `notify_attempts` counts attempts started, `notify_next_at` is when the next
is due (NULL: none will be: no webhook, delivered, or given up) and `notify_error` why the last one failed.
The index on notify_next_at finds the due deliveries; the job table is small, so it is built plainly.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notify_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notify_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("notify_next_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notify_error", sa.Text(), nullable=True))
        batch_op.create_index("ix_job_notify_next_at", ["notify_next_at"])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_notify_next_at")
        batch_op.drop_column("notify_error")
        batch_op.drop_column("notify_next_at")
        batch_op.drop_column("notify_attempts")
        batch_op.drop_column("notified_at")
        batch_op.drop_column("notify_url")

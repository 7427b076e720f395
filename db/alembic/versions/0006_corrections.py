"""corrections of results by people; result pages least confident first

The correction table keeps every label a person gave a result, with the label shown before it: the
model's label in result is never changed, a result's current label is its latest correction's, and
undoing one deletes it (db.corrections). Its index on (job_id, result_id, id) finds a result's latest
correction and a job's corrected results; deleting a job deletes its corrections.

The index on result (job_id, confidence, id) serves the pages of a job's results in confidence order
(db.result_pages). It costs every result insert a little; on PostgreSQL it is built CONCURRENTLY, so
workers go on writing results while it is built (a failed build leaves an INVALID index to drop).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as in db.models: SQLite's rowid alias stays INTEGER


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "correction",
        sa.Column("id", ID, primary_key=True),
        sa.Column("job_id", ID, sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False),
        sa.Column("result_id", ID, nullable=False),
        sa.Column("old_label", sa.String(length=32), nullable=True),
        sa.Column("new_label", sa.String(length=32), nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.CheckConstraint("new_label IN ('cat', 'dog', 'neither')", name="ck_correction_new_label"),
    )
    op.create_index("ix_correction_job_id_result_id_id", "correction", ["job_id", "result_id", "id"])
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_result_job_id_confidence_id",
            "result",
            ["job_id", "confidence", "id"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_result_job_id_confidence_id", table_name="result")
    op.drop_index("ix_correction_job_id_result_id_id", table_name="correction")
    op.drop_table("correction")

"""64-bit ids; a job's allowed roots, the files its listing left out, the listing's lease and cursor

On PostgreSQL the ids of job, batch and result (and the columns that refer to them) become
BIGINT, and their sequences too: an INTEGER id ends at 2,147,483,647, which a busy result table
reaches. Changing a column's type rewrites its table and its indexes under an exclusive lock:
2.8-3.5 s for 1,000,000 result rows on the development machine (an Intel Xeon with AMX), so
plan the upgrade of a large table for a quiet hour. On SQLite an INTEGER PRIMARY KEY is
already 64-bit, and only the new columns are added.

job.roots keeps the folders a job's files may be opened in (workers check it when they open
each file); job.skipped and job.skipped_detail count the files its listing left out, and why;
job.planner, job.planner_heartbeat_at and job.plan_cursor are the listing's lease and cursor, so
that a listing whose process died is continued by another.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 18:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_COLUMNS = [("job", "id"), ("batch", "id"), ("batch", "job_id"), ("result", "id"), ("result", "job_id"),
              ("result", "batch_id")]  # fmt: skip
SEQUENCES = ["job_id_seq", "batch_id_seq", "result_id_seq"]


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("roots", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("skipped_detail", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("planner", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("planner_heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("plan_cursor", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        _set_id_type("BIGINT")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        _set_id_type("INTEGER")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("plan_cursor")
        batch_op.drop_column("planner_heartbeat_at")
        batch_op.drop_column("planner")
        batch_op.drop_column("skipped_detail")
        batch_op.drop_column("skipped")
        batch_op.drop_column("roots")


def _set_id_type(kind: str) -> None:
    for table in ("job", "batch", "result"):
        columns = [column for name, column in ID_COLUMNS if name == table]
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} TYPE {kind}" for c in columns))
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS {kind}")

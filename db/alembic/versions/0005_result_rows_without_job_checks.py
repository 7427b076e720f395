"""result rows without the foreign key to job, the (job_id, path) uniqueness and the label index

Every result row is written by the transaction that closes its batch, which can close only once
(db.results.record_batch_results), and a job's listing puts each path into one batch only: a row per
image holds by construction, as the fault tests check (rows against distinct paths). The unique
index on (job_id, path) and the foreign key's check on every inserted row were a second guard that
cost 6 of the 11 µs of PostgreSQL CPU per result row, and the index about as much disk as the table's
paths (docs/performance.md, "Fleet scale"). Nothing deletes jobs; whatever does must delete their
results too. The index on (job_id, label, id) cost another 1.5 µs a row and served little: with two
classes a label is on about every other row, so paging through (job_id, id) and filtering finds a
page as fast.

On PostgreSQL the upgrade drops the two (instant); on SQLite it copies the result table (batch mode).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 16:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite keeps these constraints unnamed; batch mode names them by this convention to drop them.
NAMING = {
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
}


def _names() -> tuple[str, str]:
    if op.get_bind().dialect.name == "postgresql":
        return "result_job_id_fkey", "result_job_id_path_key"
    return "fk_result_job_id_job", "uq_result_job_id_path"


def upgrade() -> None:
    """Upgrade schema."""
    foreign_key, unique = _names()
    with op.batch_alter_table("result", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index("ix_result_job_label_id")
        batch_op.drop_constraint(foreign_key, type_="foreignkey")
        batch_op.drop_constraint(unique, type_="unique")


def downgrade() -> None:
    """Downgrade schema."""
    foreign_key, unique = _names()
    with op.batch_alter_table("result", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.create_unique_constraint(unique, ["job_id", "path"])
        batch_op.create_foreign_key(foreign_key, "job", ["job_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index("ix_result_job_label_id", ["job_id", "label", "id"], unique=False)

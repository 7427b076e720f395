"""result.batch_id without index or foreign key

Nothing looks results up by batch, and a job's deletion reaches its results through
result.job_id; keeping the index and the foreign key up to date cost about a sixth of
every results insert on PostgreSQL (docs/performance.md, "The results transaction").
On PostgreSQL the upgrade only drops the two; on SQLite it copies the result table (batch
mode), about 2.6 s for 1,000,000 rows on the development machine.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 15:05:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite keeps the foreign key unnamed; batch mode names it by this convention to drop it.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _foreign_key() -> str:
    return "result_batch_id_fkey" if op.get_bind().dialect.name == "postgresql" else "fk_result_batch_id_batch"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("result", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index("ix_result_batch_id")
        batch_op.drop_constraint(_foreign_key(), type_="foreignkey")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.create_foreign_key(_foreign_key(), "batch", ["batch_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index("ix_result_batch_id", ["batch_id"], unique=False)

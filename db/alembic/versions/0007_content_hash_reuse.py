"""each result's content hash, and jobs that reuse earlier results of the same bytes and model

A worker hashes (SHA-256) the bytes of each file it reads. A job with `reuse` on (the default) gives a
file whose bytes and model version match an earlier successful result that result's label and
confidence, without decoding or a forward pass, and counts it in `reused` (it is also in `done`).
The partial index on result (content_hash) finds earlier results by hash: on PostgreSQL a hash index,
which cost each insert about half of what a B-tree of the 32-byte hashes did (docs/performance.md), and
serves the one kind of lookup needed, equality. Rows without a hash (files that could not be read) are
not in it. On PostgreSQL it is built CONCURRENTLY, so workers go on writing results while it is built (a
failed build leaves an INVALID index to drop).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 18:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reuse", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column("reused", sa.Integer(), server_default="0", nullable=False))
    op.add_column("result", sa.Column("content_hash", sa.LargeBinary(length=32), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_result_content_hash",
            "result",
            ["content_hash"],
            postgresql_using="hash",
            postgresql_where=sa.text("content_hash IS NOT NULL"),
            sqlite_where=sa.text("content_hash IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_result_content_hash", table_name="result")
    op.drop_column("result", "content_hash")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("reused")
        batch_op.drop_column("reuse")

"""KBS schema: enrollment uses and revocations (issue 10, party enrollments).

Revision ID: 0002_enrollments
Revises: 0001

Frozen, as every revision: the table is spelled out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision = "0002_enrollments"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``kbs_enrollments`` (key ``party/jti``, use count, revocation)."""
    op.create_table(
        "kbs_enrollments",
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("uses", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation", sa.LargeBinary, nullable=True),
    )


def downgrade() -> None:
    """Drop ``kbs_enrollments``."""
    op.drop_table("kbs_enrollments")

"""KBS schema v3: authenticated rows (adversary H).

Revision ID: 0003_row_authentication
Revises: 0002_enrollments

Adds ``tag`` (HMAC-SHA-256 under the KBS storage key, :mod:`teeflow.kbs.store.rows`) to every
table, ``audit_seq`` (the audit entry that last changed the row) to agreements, resources,
counters and enrollments, and ``touches`` (the row an entry changed) to the audit log. Sessions are
ephemeral and change shape (keyed hash of the id, encrypted claims): the table is recreated
empty. Rows written before this revision have no tag and are refused as tampered: a KBS
store from before row authentication must be re-created (documented in docs/kbs.md).
Frozen like 0001: tables are spelled out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision = "0003_row_authentication"
down_revision: str | None = "0002_enrollments"
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add tags and state-log columns; recreate the sessions table."""
    for table in ("kbs_agreements", "kbs_resources", "kbs_counters", "kbs_enrollments"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("audit_seq", sa.BigInteger, nullable=True))
            batch.add_column(sa.Column("tag", sa.LargeBinary(32), nullable=True))
    with op.batch_alter_table("kbs_audit") as batch:
        batch.add_column(sa.Column("touches", sa.String(600), nullable=True))
        batch.add_column(sa.Column("tag", sa.LargeBinary(32), nullable=True))
    op.drop_index("ix_kbs_sessions_expires_at", table_name="kbs_sessions")
    op.drop_table("kbs_sessions")
    op.create_table(
        "kbs_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(64), nullable=False),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
        sa.Column("consumed", sa.Boolean, nullable=False),
        sa.Column("token_digest", sa.LargeBinary(64), nullable=True),
        sa.Column("claims", sa.LargeBinary, nullable=True),
        sa.Column("token_expires_at", _time(), nullable=True),
        sa.Column("tag", sa.LargeBinary(32), nullable=True),
    )
    op.create_index("ix_kbs_sessions_expires_at", "kbs_sessions", ["expires_at"])


def downgrade() -> None:
    """Refused: going back would strip the rows' authentication tags (the KBS never downgrades
    its schema; restore from a backup made before the upgrade instead).

    Raises:
        StorageError: always.
    """
    from teeflow.kbs.store.interface import StorageError

    raise StorageError("the KBS schema is not downgraded below 0003 (row authentication)")

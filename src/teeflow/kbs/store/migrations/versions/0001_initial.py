"""KBS schema v1: agreements, resources, counters, sessions, audit.

Revision ID: 0001
Revises: (none)

Frozen: this revision spells out its tables instead of importing the current metadata, so
later model changes need a new revision (``tests/storage`` checks head matches the tables
of ``teeflow.kbs.store._engine``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the five KBS tables."""
    op.create_table(
        "kbs_agreements",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("digest", sa.LargeBinary(64), nullable=False, unique=True),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.create_table(
        "kbs_resources",
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("grant_doc", sa.LargeBinary, nullable=False),
        sa.Column("grant_digest", sa.LargeBinary(64), nullable=False),
        sa.Column("not_after", _time(), nullable=True),
        sa.Column("max_releases", sa.BigInteger, nullable=True),
        sa.Column("release_count", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.create_table(
        "kbs_counters",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.LargeBinary(64), nullable=False),
    )
    op.create_table(
        "kbs_sessions",
        sa.Column("session_id", sa.String(256), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(64), nullable=False),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
        sa.Column("consumed", sa.Boolean, nullable=False),
        sa.Column("token_digest", sa.LargeBinary(64), nullable=True),
        sa.Column("claims_json", sa.Text, nullable=True),
        sa.Column("token_expires_at", _time(), nullable=True),
    )
    op.create_index("ix_kbs_sessions_expires_at", "kbs_sessions", ["expires_at"])
    op.create_table(
        "kbs_audit",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", _time(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("signature", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    """Drop the KBS tables (destroys all KBS state)."""
    op.drop_table("kbs_audit")
    op.drop_index("ix_kbs_sessions_expires_at", table_name="kbs_sessions")
    op.drop_table("kbs_sessions")
    op.drop_table("kbs_counters")
    op.drop_table("kbs_resources")
    op.drop_table("kbs_agreements")

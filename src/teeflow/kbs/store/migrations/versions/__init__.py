"""Alembic revisions of the KBS schema (one module per revision; never edit a released one)."""

__all__: list[str] = []

"""Alembic environment of the KBS schema (run by ``teeflow.kbs.store.sql.open_sql_store``)."""

__all__: list[str] = []

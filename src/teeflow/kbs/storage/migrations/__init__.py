"""Alembic environment of the KBS schema (run by ``teeflow.kbs.storage.sql.open_sql_store``)."""

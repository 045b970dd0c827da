"""SQLAlchemy 2 models (source of truth), engine/session factory and Alembic upgrade."""

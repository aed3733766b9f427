"""SQLAlchemy 2 schema, engine, matching and repository."""

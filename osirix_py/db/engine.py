"""Opening a database: SQLite (WAL) by default, any SQLAlchemy URL by config."""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url

from .schema import SCHEMA_VERSION, metadata, schema_info, users

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """The database cannot be opened or has an incompatible schema."""


@dataclass
class Database:
    """An opened, schema-checked database.

    ``engine`` is thread-safe; every unit of work opens its own connection
    (``with db.engine.begin() as conn``), never shared across threads.
    """

    engine: Engine
    url: str

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(schema_info.c.version)).scalar_one()

    def ping(self) -> None:
        """Run a real query (raises on failure); used by /testdbalive."""
        with self.engine.connect() as conn:
            conn.execute(select(schema_info.c.version)).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer (C-FIND while C-STORE ingests).
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns -- a C-STORE success is only
    # sent after that (durable acknowledgement).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA temp_store=MEMORY")
    # DICOM wildcard matching is case-sensitive except for person names,
    # which match through their case-folded shadow columns.
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


def open_database(url: str, *, create: bool = True) -> Database:
    """Open (and if needed create) the database at *url*.

    Raises :class:`DatabaseError` with a readable reason when the file cannot
    be opened or its schema is newer than this program understands.
    """
    u = make_url(url)
    kwargs: dict = {"future": True}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            parent = Path(u.database).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create database folder {parent}: {exc}") from exc
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # bad URL, missing driver
        raise DatabaseError(f"cannot open database {u.render_as_string(hide_password=True)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    db = Database(engine=engine, url=u.render_as_string(hide_password=True))
    try:
        _ensure_schema(db, create=create)
    except DatabaseError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open database {db.url}: {exc}") from exc
    return db


def _ensure_schema(db: Database, *, create: bool) -> None:
    insp = inspect(db.engine)
    if not insp.has_table("schema_info"):
        if insp.get_table_names():
            raise DatabaseError(
                f"{db.url} holds tables but no osirix-py schema record; refusing to touch it"
            )
        if not create:
            raise DatabaseError(f"{db.url} has no osirix-py database")
        metadata.create_all(db.engine)
        with db.engine.begin() as conn:
            conn.execute(
                schema_info.insert().values(
                    id=1, version=SCHEMA_VERSION, created_at=_dt.datetime.now(_dt.timezone.utc)
                )
            )
        log.info("created database %s (schema %d)", db.url, SCHEMA_VERSION)
        return
    version = db.schema_version()
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{db.url} has schema version {version}, newer than this osirix-py "
            f"understands ({SCHEMA_VERSION}); upgrade osirix-py"
        )
    if version < SCHEMA_VERSION:
        upgrade(db, version)
    # Tables added without a version bump (none yet) are created here.
    metadata.create_all(db.engine)


#: Explicit, ordered upgrade steps: version -> steps to reach version+1.  A step
#: is an SQL statement, or a callable taking the connection (for DDL that
#: SQLAlchemy should spell for the dialect).
UPGRADES: dict[int, list] = {
    # 1 -> 2: the users table of the web server.
    1: [lambda conn: users.create(conn, checkfirst=True)],
}


def upgrade(db: Database, from_version: int) -> None:
    """Apply the upgrade steps from *from_version* to ``SCHEMA_VERSION``."""
    with db.engine.begin() as conn:
        for v in range(from_version, SCHEMA_VERSION):
            steps = UPGRADES.get(v)
            if steps is None:
                raise DatabaseError(f"no upgrade path from schema {v} to {v + 1}")
            for stmt in steps:
                if callable(stmt):
                    stmt(conn)
                else:
                    conn.execute(text(stmt))
            log.warning("upgraded database schema %d -> %d", v, v + 1)
        conn.execute(
            schema_info.update().values(
                version=SCHEMA_VERSION, upgraded_at=_dt.datetime.now(_dt.timezone.utc)
            )
        )

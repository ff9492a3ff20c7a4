"""Database access: engines for SQLite (the default, a file) and PostgreSQL, transactions that
serialise ticket assignment, and schema migrations with Alembic.

Assignment must never let two workers give the same handler more than their capacity. On
PostgreSQL a transaction locks the rows of the teams it assigns in (``SELECT ... FOR UPDATE``);
SQLite has no row locks, so every transaction starts with ``BEGIN IMMEDIATE``, which takes the
database's write lock at once and makes concurrent transactions wait their turn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage.errors import ConfigError, StoreError
from triage.store.models import Team

logger = logging.getLogger("triage.store")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Key of the PostgreSQL advisory lock held while migrating or syncing the roster, so that
# several workers starting at once do it one after another.
_SETUP_LOCK = 74_327_001
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def parse_database_url(url: str, *, existing: bool = False) -> URL:
    """A URL SQLAlchemy understands; ``~`` in a SQLite path is expanded and its folder created,
    or with ``existing`` (a command that only reads the store) the file must be there, so that
    a mistyped path is an error instead of a new, empty store. PostgreSQL URLs always use
    psycopg 3, the driver installed with triage."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"database_url: expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
            f"(got {url!r})"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(
                f"database_url: expected sqlite:///PATH to a file (got {url!r}): an in-memory "
                "database is a new, empty one on every connection"
            )
        path = Path(parsed.database).expanduser()
        if existing and not path.is_file():
            raise ConfigError(
                f"database_url: expected an existing ticket store (got {url!r}: no file {path})"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
    elif parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
    else:
        raise ConfigError(
            f"database_url: expected a sqlite or postgresql URL (got {parsed.get_backend_name()!r})"
        )
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is switched off so that "begin" below decides
        # how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine and its sessions. Every unit of work runs in :meth:`transaction`."""

    def __init__(self, url: str, *, pool_size: int = 5, existing: bool = False):
        self.url = parse_database_url(url, existing=existing)
        self.display_url = self.url.render_as_string(hide_password=True)
        options: dict[str, Any] = {"future": True}
        if self.dialect == "postgresql":
            options.update(pool_size=pool_size, pool_pre_ping=True)
        self.engine = create_engine(self.url, **options)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction; committed when the block ends, rolled back on any error. Database
        failures leave as :class:`StoreError` without the URL's password (a caller that expects
        one, such as a duplicate key, catches it inside the block)."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(
                f"{self.display_url}: {type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
            ) from exc

    def lock_teams(self, session: Session, team_ids: Sequence[str]) -> None:
        """Hold the team rows until the transaction ends: assignment in a team is serialised.
        Locked in id order, so two transactions that need the same teams cannot deadlock."""
        ids = sorted(set(team_ids))
        session.execute(select(Team.id).where(Team.id.in_(ids)).order_by(Team.id).with_for_update())

    def setup_lock(self, connection: Connection) -> None:
        """Serialise migrations and roster syncs of processes starting together."""
        if self.dialect == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SETUP_LOCK})")

    def upgrade(self) -> str:
        """Apply every pending migration; returns the revision the database is at."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.util import CommandError

        try:
            with self.engine.begin() as connection:
                self.setup_lock(connection)
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS_DIR))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                revision = MigrationContext.configure(connection).get_current_revision()
        except (SQLAlchemyError, CommandError) as exc:
            # CommandError: e.g. the database was migrated by a newer version of triage.
            raise StoreError(f"{self.display_url}: cannot migrate: {exc}") from exc
        logger.info("database %s at revision %s", self.display_url, revision)
        return revision or "base"

    def dispose(self) -> None:
        self.engine.dispose()

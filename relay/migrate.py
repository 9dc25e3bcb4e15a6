"""Schema migrations with Alembic, and the check every service runs at start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from relay.errors import RelayError

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaMismatch(RelayError):
    """The database schema is not the one this relay was built for."""

    reason = "schema_mismatch"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision this relay knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision."""
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def check(engine: Engine, *, auto_upgrade: bool) -> None:
    """Refuse to run on a schema other than head; optionally migrate first."""
    found = current(engine)
    wanted = head()
    if found == wanted:
        return
    known = {
        script.revision
        for script in ScriptDirectory.from_config(_config()).walk_revisions()
    }
    if found is not None and found not in known:
        raise SchemaMismatch(
            f"the database schema (revision {found}) is newer than this relay "
            f"knows ({wanted}); run a newer relay"
        )
    if auto_upgrade:
        upgrade(engine)
        return
    state = "not migrated" if found is None else f"at revision {found}"
    raise SchemaMismatch(
        f"the database schema is {state}, this relay needs {wanted}: "
        "run `relay db upgrade`"
    )

"""Shared fixtures: stores on both engines, rules, settings, signed deliveries."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from relay import migrate
from relay.store import Store

POSTGRES_ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test run's own on the local PostgreSQL, dropped after."""
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable at " + POSTGRES_ADMIN_URL)
        pytest.skip("PostgreSQL is not reachable at " + POSTGRES_ADMIN_URL)
    name = f"relay_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_postgres_store(postgres_url: str) -> Store:
    """A store on the run's PostgreSQL database with empty, migrated tables."""
    store = Store.from_url(postgres_url)
    migrate.upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE job_attempts, jobs, events, cooldowns RESTART IDENTITY CASCADE"
        )
    return store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A migrated, empty store on each engine."""
    if request.param == "sqlite":
        store = Store.from_url(f"sqlite:///{tmp_path / 'relay.db'}")
        migrate.upgrade(store.engine)
    else:
        store = fresh_postgres_store(request.getfixturevalue("postgres_url"))
    yield store
    store.close()


# Real-process deployments (gunicorn, workers, emulators) for any test folder.
from tests.deployment import relay, relay_env, running, sandbox  # noqa: E402, F401

"""Fixtures of the delivery tests: in-process emulators and a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import migrate
from relay.sandbox import Sandbox
from relay.store import Store
from tests.delivery.support import Desk


@pytest.fixture(scope="session")
def emulators() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def desk(emulators: Sandbox, tmp_path: Path) -> Iterator[Desk]:
    """Emulators back at their seed data and an empty SQLite store."""
    emulators.reset()
    store = Store.from_url(f"sqlite:///{tmp_path / 'relay.db'}")
    migrate.upgrade(store.engine)
    yield Desk(emulators, store)
    store.close()

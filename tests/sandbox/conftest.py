"""One sandbox for the emulator tests, put back to its seed data before each."""

from collections.abc import Iterator

import pytest

from relay.sandbox import Sandbox


@pytest.fixture(scope="session")
def running_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(running_sandbox: Sandbox) -> Sandbox:
    running_sandbox.reset()
    return running_sandbox

"""The deployment fixtures live in tests/deployment.py, shared by every folder."""

from tests.deployment import ADMIN_TOKEN, Relay

__all__ = ["ADMIN_TOKEN", "Relay"]

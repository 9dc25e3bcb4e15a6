"""Local emulators of Bugpilot, Zendesk and Intercom, as real HTTP servers.

Development mode, the demo and the end-to-end tests point relay at them with
``sandbox_environment`` (or ``sandbox_defaults`` for the fixed ports); tests in
other processes drive them with ``SandboxControl``.
"""

from relay.sandbox.control import SandboxControl
from relay.sandbox.credentials import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
)
from relay.sandbox.server import Sandbox, main, sandbox_defaults, sandbox_environment

__all__ = [
    "SANDBOX_BUGPILOT_API_KEY",
    "SANDBOX_INTERCOM_ADMIN_ID",
    "SANDBOX_INTERCOM_SECRET",
    "SANDBOX_INTERCOM_TOKEN",
    "SANDBOX_WORKSPACE_ID",
    "SANDBOX_ZENDESK_EMAIL",
    "SANDBOX_ZENDESK_SECRET",
    "SANDBOX_ZENDESK_TOKEN",
    "Sandbox",
    "SandboxControl",
    "main",
    "sandbox_defaults",
    "sandbox_environment",
]

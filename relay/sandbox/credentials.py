"""The fixed credentials the emulators accept and relay is given in sandbox mode.

They guard nothing: the emulators listen on loopback and hold made-up data. They
are fixed so that a developer can paste them and tests can sign webhooks.
"""

SANDBOX_BUGPILOT_API_KEY = "ws-sandbox-key"
SANDBOX_WORKSPACE_ID = "ws_sandbox"
SANDBOX_ZENDESK_EMAIL = "relay@example.com"
SANDBOX_ZENDESK_TOKEN = "zd-sandbox-token"  # noqa: S105
SANDBOX_ZENDESK_SECRET = "zd-sandbox-webhook-secret"  # noqa: S105
SANDBOX_INTERCOM_TOKEN = "ic-sandbox-token"  # noqa: S105
SANDBOX_INTERCOM_SECRET = "ic-sandbox-client-secret"  # noqa: S105
SANDBOX_INTERCOM_ADMIN_ID = "991267696"

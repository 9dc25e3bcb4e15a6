"""relay: a helpdesk tag becomes a Bugpilot capture and an internal note."""

__version__ = "0.1.0"

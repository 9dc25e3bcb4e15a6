"""Rules: match time with 10 rules and with 10,000, side by side."""

from __future__ import annotations

import time
from typing import Any

from relay.rules import parse_rules

CALLS = 200_000


def rules_file(count: int) -> str:
    lines = ["version: 1", "rules:"]
    for number in range(count):
        lines += [
            f"  - name: rule-{number}",
            "    when:",
            f"      tag: tag_{number}",
            "    action: upload-screenshot",
        ]
    return "\n".join(lines) + "\n"


def match_seconds(count: int) -> float:
    """Seconds a call, averaged, for a tag that fires one rule among ``count``."""
    rules = parse_rules(rules_file(count))
    tags = ("vip", f"tag_{count // 2}", "mobile")
    started = time.perf_counter()
    for _ in range(CALLS):
        rules.match_tags("zendesk", tags)
    return (time.perf_counter() - started) / CALLS


def measure() -> dict[str, Any]:
    small = min(match_seconds(10) for _ in range(3))
    large = min(match_seconds(10_000) for _ in range(3))
    return {
        "match_us_10_rules": round(small * 1e6, 3),
        "match_us_10000_rules": round(large * 1e6, 3),
        "ratio": round(large / small, 3),
    }

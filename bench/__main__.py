"""``make bench``: relay's figures beside their baselines, in one run.

Writes bench/results.json and prints a Markdown table. Every ratio compares two
measurements taken in this run, since absolute numbers drift on a shared
machine.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import delivery, ingest, rules
from bench.common import ROOT

RESULTS = ROOT / "bench" / "results.json"


def main() -> int:
    if shutil.which("wrk") is None:
        subprocess.run(["bash", str(ROOT / ".ci" / "install-tools")], check=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("ingest (relay beside bare Flask under wrk) ...", flush=True)
    results["ingest"] = ingest.measure()
    print("delivery (5000-job backlog, 50 ms emulators) ...", flush=True)
    results["delivery"] = delivery.measure()
    print("rules ...", flush=True)
    results["rules"] = rules.measure()
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)} in {results['seconds']} s")
    return 0


def table(results: dict[str, Any]) -> str:
    """The Markdown table of headline figures beside their targets."""
    ingest_ = results["ingest"]
    relay_, bare = ingest_["relay"], ingest_["bare"]
    rows = [
        (
            "Ingest, relay / bare Flask (16 connections)",
            f"{relay_['per_second']:.0f} / {bare['per_second']:.0f} req/s = "
            f"{ingest_['ratio']:.2f}",
            ">= 0.6",
        ),
        (
            "Ingest p50 / p99, relay",
            f"{relay_['p50_ms']:.1f} / {relay_['p99_ms']:.1f} ms",
            "p99 <= 25 ms",
        ),
        (
            "Ingest p50 / p99, bare Flask",
            f"{bare['p50_ms']:.1f} / {bare['p99_ms']:.1f} ms",
            "",
        ),
    ]
    for case in results["delivery"]:
        rows.append(
            (
                f"Delivery, {case['case']} ({case['threads']} threads)",
                f"{case['jobs_per_second']:.0f} / {case['bound_per_second']:.0f} jobs/s"
                f" = {case['ratio_to_bound']:.2f} of bound",
                ">= 0.8 (32 threads)",
            )
        )
    rules_ = results["rules"]
    rows += [
        (
            "Rule match, 10 / 10,000 rules",
            f"{rules_['match_us_10_rules']:.2f} / "
            f"{rules_['match_us_10000_rules']:.2f} us = {rules_['ratio']:.2f}x",
            "<= 2x",
        ),
        (
            "Peak RSS, web worker",
            f"{ingest_['web_worker_peak_rss_mb']:.0f} MB",
            "<= 80 MB",
        ),
        (
            "Peak RSS, worker process",
            f"{max(c['worker_peak_rss_mb'] for c in results['delivery']):.0f} MB",
            "<= 80 MB",
        ),
        (
            "Cold start, `relay web` to 200 on /readyz",
            f"{ingest_['cold_start_seconds']:.2f} s",
            "",
        ),
    ]
    lines = ["| measure | result | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())

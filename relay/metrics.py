"""Every Prometheus metric relay exports, defined once.

Under gunicorn, and when ``relay run`` starts the worker beside the web server,
the processes share ``PROMETHEUS_MULTIPROC_DIR``; the scrape builds a fresh
registry that adds up every process's files. The job gauges are not kept in
any process: ``StoreCollector`` reads them from the store at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

WEBHOOKS = Counter(
    "relay_webhooks_total",
    "Webhook deliveries by provider and outcome (accepted, ignored, rejected).",
    ["provider", "outcome"],
)
WEBHOOK_REJECTIONS = Counter(
    "relay_webhook_rejections_total",
    "Webhook deliveries answered with an error, by reason code.",
    ["provider", "reason"],
)
WEBHOOK_DURATION = Histogram(
    "relay_webhook_duration_seconds",
    "Time to answer a webhook delivery.",
    ["provider"],
    buckets=LATENCY_BUCKETS,
)
JOBS_ENQUEUED = Counter(
    "relay_jobs_enqueued_total",
    "Jobs stored for delivery, by provider, rule and action.",
    ["provider", "rule", "action"],
)
BUGPILOT_REQUESTS = Counter(
    "relay_bugpilot_requests_total",
    "Bugpilot action requests by action and outcome (ok or the error reason).",
    ["action", "outcome"],
)
BUGPILOT_DURATION = Histogram(
    "relay_bugpilot_request_duration_seconds",
    "Duration of one HTTP call to the Bugpilot Actions API.",
    ["action"],
    buckets=LATENCY_BUCKETS,
)
NOTES = Counter(
    "relay_notes_total",
    "Internal notes written to helpdesks, by provider and outcome.",
    ["provider", "outcome"],
)
HELPDESK_DURATION = Histogram(
    "relay_helpdesk_request_duration_seconds",
    "Duration of one HTTP call to a helpdesk API.",
    ["provider"],
    buckets=LATENCY_BUCKETS,
)
JOB_ATTEMPTS = Histogram(
    "relay_job_attempts",
    "Attempts a job took, observed when it ends done or dead.",
    ["state"],
    buckets=(1, 2, 3, 5, 8, 13, 21, 34),
)
CIRCUIT_OPEN = Gauge(
    "relay_circuit_open",
    "1 while the circuit breaker for a destination is open.",
    ["destination"],
    multiprocess_mode="livemax",
)
STORE_SCRAPE_ERRORS = Counter(
    "relay_store_scrape_errors_total",
    "Scrapes that could not read the job gauges from the store.",
)
BUILD_INFO = Gauge(
    "relay_build_info",
    "Always 1; the version label says which relay is running.",
    ["version"],
    multiprocess_mode="max",
)

JobCounts = Callable[[], tuple[Mapping[str, int], float | None]]


class StoreCollector(Collector):
    """Reads queue depth by state and the oldest pending job's age at scrape."""

    def __init__(self, read: JobCounts) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        try:
            counts, oldest = self.read()
        except Exception:  # the scrape must answer even when the store is down
            STORE_SCRAPE_ERRORS.inc()
            return
        jobs = GaugeMetricFamily(
            "relay_jobs", "Jobs in the store by state.", labels=["state"]
        )
        for state in ("pending", "noting", "done", "dead"):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        age = GaugeMetricFamily(
            "relay_oldest_pending_job_age_seconds",
            "Age of the oldest job not yet done or dead (0 when there is none).",
        )
        age.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest))
        yield age


def render(read_jobs: JobCounts | None) -> bytes:
    """The exposition text for one scrape, built with a fresh registry.

    The store is read first, so a failed read is already counted in
    ``relay_store_scrape_errors_total`` on the scrape that failed.
    """
    registry = CollectorRegistry(auto_describe=False)
    if read_jobs is not None:
        registry.register(StoreCollector(read_jobs))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    return generate_latest(registry)

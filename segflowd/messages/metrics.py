"""Prometheus metrics of queueing and delivery, on the shared registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from segflowd.metrics import REGISTRY

MESSAGES = Counter(
    "segflowd_messages",
    "Messages that reached a final status (sent, failed, suppressed) in this process, by kind.",
    ["kind", "status"],
    registry=REGISTRY,
)
QUEUED = Gauge(
    "segflowd_messages_queued",
    "Messages waiting for delivery (status queued) in the database, refreshed by the delivery loop.",
    registry=REGISTRY,
)
SEND_ATTEMPTS = Counter(
    "segflowd_send_attempts",
    "Calls to the email provider by outcome: sent, temporary (retried) or permanent (failed).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
SEND_SECONDS = Histogram(
    "segflowd_send_seconds",
    "Time of one provider call (SMTP transaction, SES request or outbox write).",
    ["provider"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_LATENCY = Histogram(
    "segflowd_delivery_latency_seconds",
    "Time from queueing a message to the provider accepting it, by kind; includes retries.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

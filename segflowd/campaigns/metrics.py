"""Prometheus metrics of campaign runs and the scheduler."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from segflowd.metrics import REGISTRY

STEPS = Counter(
    "segflowd_campaign_steps",
    "Flow steps by kind and outcome: ok (executed and recorded), failed (the flow raised "
    "or the step was invalid), diverged (a replay yielded a different step than the journal).",
    ["kind", "outcome"],
    registry=REGISTRY,
)

RUNS_STARTED = Counter(
    "segflowd_campaign_runs_started",
    "Campaign runs started (counted at insert, so a start whose transaction rolls back still counts).",
    ["campaign"],
    registry=REGISTRY,
)

RUNS_ENDED = Counter(
    "segflowd_campaign_runs_ended",
    "Campaign runs ended, by final status.",
    ["campaign", "status"],
    registry=REGISTRY,
)

SCHEDULER_LAG = Histogram(
    "segflowd_scheduler_lag_seconds",
    "Time from a step's due time to the moment the scheduler ran it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)

SCHEDULER_RETRIES = Counter(
    "segflowd_scheduler_retries",
    "Claimed steps given back after a temporary database error, to be run again.",
    registry=REGISTRY,
)

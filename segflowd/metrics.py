"""The Prometheus registry that every module adds its metrics to.

Each module declares its own metrics against `REGISTRY`, and
`GET /metrics` serves it in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics

REGISTRY = CollectorRegistry(auto_describe=True)

# The `_created` timestamp series double every counter's output and tell
# an operator nothing that process start time does not.
disable_created_metrics()

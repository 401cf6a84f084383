"""The Prometheus registry that every module adds its metrics to.

Each module declares its own metrics against `REGISTRY`, and
`GET /metrics` serves it in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

REGISTRY = CollectorRegistry(auto_describe=True)

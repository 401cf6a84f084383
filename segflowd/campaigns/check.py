"""`segflowd check` for campaign flows."""

from __future__ import annotations

from segflowd.config import Config


def check_flows(config: Config) -> list[str]:
    """Import every campaign's flow and return an error per unusable one."""
    # TODO: flow loading is not built yet.
    return []

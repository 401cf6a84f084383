"""`segflowd check` for campaign flows."""

from __future__ import annotations

from segflowd.campaigns.loader import FlowLoadError, load_flow
from segflowd.config import Config


def check_flows(config: Config) -> list[str]:
    """Import every campaign's flow and return an error per unusable one."""
    errors: list[str] = []
    for campaign in config.campaigns.values():
        try:
            load_flow(config, campaign)
        except FlowLoadError as exc:
            errors.append(str(exc))
    return errors

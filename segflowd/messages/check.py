"""`segflowd check` for templates."""

from __future__ import annotations

from segflowd.config import Config


def check_templates(config: Config) -> list[str]:
    """Compile and sample-render every template; return an error per broken one."""
    # TODO: template checks are not built yet.
    return []

"""`segflowd check` for segments."""

from __future__ import annotations

from typing import Any

from segflowd.config import Config


async def check_segments(config: Config, db: Any | None) -> tuple[list[str], list[str]]:
    """Validate every segment's SQL; return (errors, notes).

    With `db`, each segment that passes validation also runs read-only with
    LIMIT 0 so that a misspelt column is reported before deploy.
    """
    # TODO: SQL validation is not built yet.
    return [], []

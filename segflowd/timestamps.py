"""ISO-8601 timestamps from clients, stored as naive UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp to naive UTC; raise ValueError naming the value.

    An offset (`+02:00`, `Z`) is applied, so `2026-03-29T01:30:00+02:00`
    is stored as 2026-03-28 23:30:00. A timestamp without an offset is UTC.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an ISO-8601 timestamp such as 2026-03-29T01:30:00Z, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp such as 2026-03-29T01:30:00Z, got {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    if not 1970 <= parsed.year <= 2999:
        raise ValueError(f"timestamp {value!r} is outside the years 1970 to 2999")
    return parsed


def format_timestamp(value: datetime) -> str:
    """Naive UTC datetime to ISO-8601 with a Z."""
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

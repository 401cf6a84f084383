"""Plain records passed between the domain modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """One stored event. `created_at` is when it happened, in naive UTC."""

    id: int
    user_id: str
    name: str
    attributes: dict[str, Any]
    created_at: datetime


@dataclass
class MembershipChanges:
    """Segments a user entered and left in one evaluation, in name order."""

    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entered or self.left)


@dataclass(frozen=True)
class IdentifyItem:
    """An identify call: create the user or merge attributes into it."""

    user_id: str
    attributes: dict[str, Any]
    idempotency_key: str | None = None


@dataclass(frozen=True)
class TrackItem:
    """A track call. `raw_timestamp` is the client's text, part of the idempotency hash."""

    user_id: str
    name: str
    attributes: dict[str, Any]
    timestamp: datetime | None
    idempotency_key: str | None = None
    raw_timestamp: str | None = None


@dataclass(frozen=True)
class RejectedItem:
    """A batch item that failed validation; `error` is its JSON error body."""

    error: dict[str, Any]

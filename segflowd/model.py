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

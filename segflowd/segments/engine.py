"""Stored segment membership, kept current as users, events and time change."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Awaitable, Callable

from segflowd.config import Config
from segflowd.model import MembershipChanges

# Called inside the transaction that changed a user's membership, so that
# enrollment commits or rolls back with the change itself.
ChangeListener = Callable[[Any, str, MembershipChanges, datetime], Awaitable[None]]


class SegmentEngine:
    """Evaluates segments per user and in full, and stores the membership."""

    def __init__(self, config: Config, db: Any, clock: Any) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.listeners: list[ChangeListener] = []

    async def evaluate_user(self, cur: Any, user_id: str, *, event_name: str | None = None) -> MembershipChanges:
        """Re-evaluate one user's segments inside the caller's transaction.

        With `event_name`, only the segments that read events of that name
        (or events with no name filter) are evaluated; without it, every
        segment is. Stores the membership, writes enter/exit records, calls
        each listener, and returns the changes.
        """
        # TODO: segment evaluation is not built yet; no user is in any segment.
        return MembershipChanges()

    async def segments_of(self, cur: Any, user_id: str) -> list[str]:
        """Names of the segments the user is a member of now."""
        await cur.execute("SELECT segment FROM segment_members WHERE user_id = %s ORDER BY segment", (user_id,))
        return [row["segment"] for row in await cur.fetchall()]

    async def start(self) -> None:
        """Evaluate new or changed segments in full, then refresh time-dependent ones on their interval."""
        # TODO: the refresher is not built yet.

    async def stop(self) -> None:
        """Stop the refresher."""

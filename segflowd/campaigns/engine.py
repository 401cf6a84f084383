"""Campaign enrollment and durable runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from segflowd.config import Config
from segflowd.model import Event, MembershipChanges


class CampaignEngine:
    """Enrolls users from membership changes and runs flows over pending_steps."""

    def __init__(self, config: Config, db: Any, clock: Any, segments: Any, messages: Any) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.segments = segments
        self.messages = messages

    async def on_membership_change(self, cur: Any, user_id: str, changes: MembershipChanges, now: datetime) -> None:
        """Start or stop runs for a user whose segments changed, in the caller's transaction."""
        # TODO: enrollment is not built yet.

    async def on_event(self, cur: Any, event: Event, now: datetime) -> None:
        """Wake the user's runs waiting for this event name, in the caller's transaction."""
        # TODO: wait_for_event is not built yet.

    async def runs_of(self, cur: Any, user_id: str) -> list[dict[str, Any]]:
        """The user's campaign runs, newest first, for GET /api/user/{id}."""
        return []

    async def stop_user_runs(self, cur: Any, user_id: str, now: datetime) -> None:
        """End every live run of a user being deleted, in the caller's transaction."""
        # TODO: runs are not built yet.

    def wake(self) -> None:
        """Ask the scheduler to look for due steps now instead of at its next poll."""

    async def start(self) -> None:
        """Start the scheduler's background tasks."""

    async def stop(self) -> None:
        """Finish the steps in hand and stop the scheduler."""

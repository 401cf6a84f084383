"""Transactional messages and delivery workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from segflowd.config import Config
from segflowd.model import Event


class MessageService:
    """Queues transactional messages and runs the delivery workers."""

    def __init__(self, config: Config, db: Any, clock: Any) -> None:
        self.config = config
        self.db = db
        self.clock = clock

    async def on_event(self, cur: Any, event: Event, now: datetime) -> list[str]:
        """Queue the transactional messages this event triggers, in the caller's transaction.

        Returns the message keys queued.
        """
        # TODO: transactional email is not built yet.
        return []

    def wake(self) -> None:
        """Ask the delivery workers to look for queued messages now."""

    async def start(self) -> None:
        """Start the delivery workers."""

    async def stop(self) -> None:
        """Finish the sends in hand and stop the delivery workers."""

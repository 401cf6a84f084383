"""The daemon's parts, wired together once and shared by HTTP and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from segflowd.campaigns.engine import CampaignEngine
from segflowd.clock import Clock
from segflowd.config import Config
from segflowd.db import Database
from segflowd.messages.service import MessageService
from segflowd.segments.engine import SegmentEngine


@dataclass
class Services:
    config: Config
    db: Database
    clock: Clock
    segments: SegmentEngine
    messages: MessageService
    campaigns: CampaignEngine

    @classmethod
    def build(cls, config: Config, db: Database, clock: Clock) -> "Services":
        segments = SegmentEngine(config, db, clock)
        messages = MessageService(config, db, clock)
        campaigns = CampaignEngine(config, db, clock, segments, messages)
        segments.listeners.append(campaigns.on_membership_change)
        return cls(config, db, clock, segments, messages, campaigns)

    async def start_background(self) -> None:
        """Start the segment refresher, the scheduler and delivery."""
        await self.segments.start()
        await self.messages.start()
        await self.campaigns.start()

    async def stop_background(self) -> None:
        """Stop in reverse order: no new steps, then no new sends, then no refreshes."""
        await self.campaigns.stop()
        await self.messages.stop()
        await self.segments.stop()

"""Campaign enrollment and durable runs."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from segflowd.campaigns import runs
from segflowd.campaigns.loader import Flow, FlowLoadError, load_flow
from segflowd.campaigns.metrics import RUNS_ENDED
from segflowd.campaigns.runner import WakeContext
from segflowd.campaigns.scheduler import Scheduler
from segflowd.config import Config
from segflowd.model import Event, MembershipChanges
from segflowd.queries import QUERIES

log = logging.getLogger(__name__)

# Users enrolled, or runs exited, per transaction when start() catches up
# with the stored membership.
_RECONCILE_BATCH = 500


class CampaignEngine:
    """Enrolls users from membership changes and runs flows over pending_steps."""

    def __init__(self, config: Config, db: Any, clock: Any, segments: Any, messages: Any) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.segments = segments
        self.messages = messages
        self.flows: dict[str, Flow] = {}
        self.scheduler = Scheduler(config.scheduler, db, clock, WakeContext(config, self.flows, segments), messages)

    # --- flows ----------------------------------------------------------------

    def load_flows(self) -> None:
        """Import every campaign's flow; raise FlowLoadError listing every unusable one."""
        errors = []
        for campaign in self.config.campaigns.values():
            try:
                self.flows[campaign.name] = load_flow(self.config, campaign)
            except FlowLoadError as exc:
                errors.append(str(exc))
        if errors:
            raise FlowLoadError("\n".join(errors))

    def _ensure_flows(self) -> None:
        if len(self.flows) != len(self.config.campaigns):
            self.load_flows()

    # --- enrollment, in the caller's transaction --------------------------------

    async def on_membership_change(self, cur: Any, user_id: str, changes: MembershipChanges, now: datetime) -> None:
        """Start or stop runs for a user whose segments changed, in the caller's transaction.

        Only campaigns whose `segments` or `exclude` lists name a changed
        segment are considered. The caller calls `wake()` after committing,
        so that new runs start without waiting for the next poll.
        """
        changed = set(changes.entered) | set(changes.left)
        touched = [campaign for campaign in self.config.campaigns.values() if runs.touches(campaign, changed)]
        if not touched:
            return
        segments = await runs.user_segments(cur, user_id)
        started, _exited = await runs.enroll_user(cur, touched, user_id, segments, now)
        if started:
            self.scheduler.wake()

    async def on_event(self, cur: Any, event: Event, now: datetime) -> int:
        """Wake the user's runs waiting for this event name, in the caller's transaction.

        Returns how many runs it woke. The woken steps are due at once; the
        caller calls `wake()` after committing so the scheduler runs them
        without waiting for its poll.
        """
        await cur.execute(QUERIES.wake_waiting_steps, (now, event.id, event.user_id, event.name))
        woken = cur.rowcount
        if woken:
            log.debug(
                "event woke waiting runs",
                extra={"action": "runs_woken", "user_id": event.user_id, "event": event.name,
                       "event_id": event.id, "runs": woken},
            )
        return woken

    async def runs_of(self, cur: Any, user_id: str) -> list[dict[str, Any]]:
        """Return the user's campaign runs, newest first, for GET /api/user/{id}.

        Each dict has campaign, run_id, status, started_at, ended_at,
        next_step, next_step_due_at, waiting_for_event and error; times are
        ISO-8601 UTC strings.
        """
        return await runs.runs_of(cur, user_id)

    async def stop_user_runs(self, cur: Any, user_id: str, now: datetime) -> None:
        """End every live run of a user being deleted, in the caller's transaction.

        The runs end as `exited` and their journals, which hold copies of the
        user's attributes, are deleted.
        """
        ended = await runs.stop_user_runs(cur, user_id, now)
        if ended:
            log.info(
                "stopped the runs of a deleted user",
                extra={"action": "user_runs_stopped", "user_id": user_id, "runs": len(ended)},
            )

    async def reconcile_enrollment(self) -> tuple[int, int]:
        """Enroll qualifying users who never had a run, and exit dynamic runs whose user no longer qualifies.

        Membership changes enroll users as they happen; this catches up at
        start with what they cannot cover, such as a campaign added to the
        config for segments that already have members. Returns (started,
        exited) counts.

        NOTE: this reads every membership row of each campaign's segments,
        so it takes longer at each start as segments grow.
        """
        started = exited = 0
        for campaign in self.config.campaigns.values():
            while True:
                now = self.clock.now()
                async with self.db.transaction() as cur:
                    user_ids = await runs.users_to_enroll(cur, campaign, _RECONCILE_BATCH)
                    batch = [await runs.start_run(cur, campaign, user_id, now) for user_id in user_ids]
                started += sum(run_id is not None for run_id in batch)
                if len(user_ids) < _RECONCILE_BATCH or not any(batch):
                    break
            if campaign.behavior != "dynamic":
                continue
            while True:
                now = self.clock.now()
                async with self.db.transaction() as cur:
                    leaving = await runs.runs_to_exit(cur, campaign, _RECONCILE_BATCH)
                    for run_id, _user_id in leaving:
                        if await runs.end_run(cur, run_id, runs.EXITED, now, "the user no longer qualifies for the campaign"):
                            exited += 1
                            RUNS_ENDED.labels(campaign.name, runs.EXITED).inc()
                if len(leaving) < _RECONCILE_BATCH:
                    break
        if started or exited:
            log.info(
                "enrollment caught up with segment membership",
                extra={"action": "enrollment_reconciled", "runs_started": started, "runs_exited": exited},
            )
        return started, exited

    async def _warn_unknown_campaigns(self) -> None:
        async with self.db.transaction() as cur:
            await cur.execute("SELECT campaign, COUNT(*) AS steps FROM pending_steps GROUP BY campaign")
            rows = list(await cur.fetchall())
        for row in rows:
            if row["campaign"] not in self.config.campaigns:
                log.warning(
                    "pending steps belong to a campaign that is not in the config; they wait until it is back",
                    extra={"action": "unknown_campaign", "campaign": row["campaign"], "steps": row["steps"]},
                )

    # --- scheduler ----------------------------------------------------------------

    def wake(self) -> None:
        """Ask the scheduler to look for due steps now instead of at its next poll."""
        self.scheduler.wake()

    async def run_due_steps(self, limit: int | None = None) -> int:
        """Run every due step now, in this task, and return how many wakes ran (tests and tools)."""
        self._ensure_flows()
        return await self.scheduler.run_due(limit)

    async def start(self) -> None:
        """Load the flows, catch enrollment up with membership, and start the scheduler's background tasks."""
        self._ensure_flows()
        await self._warn_unknown_campaigns()
        await self.reconcile_enrollment()
        await self.scheduler.start()

    async def stop(self) -> None:
        """Finish the steps in hand and stop the scheduler."""
        await self.scheduler.stop()

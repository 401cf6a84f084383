"""The scheduler: claim due pending steps under a lease and run them.

One claimer task leases batches of due steps (`SELECT ... FOR UPDATE SKIP
LOCKED`, then a lease token and expiry) and hands them to `workers` worker
tasks; each worker runs one claim per transaction. Several processes may
share the database: SKIP LOCKED keeps their claims disjoint, and a step
whose process died is claimed again once its lease has passed. Before
running a step, a worker locks its row and checks that the row still
carries the worker's claim token, so a late worker whose lease was taken
over does nothing.

Time comes from the injected clock only. The loop polls every
`scheduler.poll_interval` of real time (or sooner on `wake()`) and compares
due times with `clock.now()`, so a test that moves a FakeClock forward by
days sees the steps it made due at the next poll, with no real waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import datetime
from typing import Any

import asyncmy.errors

from segflowd.campaigns.metrics import RUNS_ENDED, SCHEDULER_LAG, SCHEDULER_RETRIES, STEPS
from segflowd.campaigns.runner import Claim, WakeContext, WakeOutcome, run_wakes
from segflowd.campaigns.runs import ACTIVE, COMPLETED, EXITED
from segflowd.config import SchedulerConfig
from segflowd.queries import QUERIES

log = logging.getLogger(__name__)

# Claims run in one transaction by a worker. Reads and writes are shared by
# the batch, so a larger batch costs fewer round trips per step, while the
# users it locks wait for ingest a little longer.
WAKES_PER_TRANSACTION = 25


def _is_transient(exc: BaseException) -> bool:
    """True for errors worth an immediate retry: deadlocks, lock wait timeouts, lost connections."""
    return isinstance(exc, (asyncmy.errors.OperationalError, asyncmy.errors.InternalError, OSError))


def _ids(claim: Claim) -> dict[str, Any]:
    return {"campaign": claim.campaign, "run_id": claim.run_id, "user_id": claim.user_id, "step_index": claim.step_index}


def first_group_by_user(claims: list[Claim]) -> tuple[list[Claim], list[Claim]]:
    """Split claims into the largest leading group with distinct users, and the rest in order."""
    group: list[Claim] = []
    rest: list[Claim] = []
    users: set[str] = set()
    for claim in claims:
        if claim.user_id in users:
            rest.append(claim)
        else:
            users.add(claim.user_id)
            group.append(claim)
    return group, rest


def group_by_user(claims: list[Claim]) -> list[list[Claim]]:
    """Split claims into transactions of at most WAKES_PER_TRANSACTION claims of distinct users."""
    groups: list[list[Claim]] = []
    rest = claims
    while rest:
        group, rest = first_group_by_user(rest)
        rest = group[WAKES_PER_TRANSACTION:] + rest
        groups.append(group[:WAKES_PER_TRANSACTION])
    return groups


def scheduler_name() -> str:
    """Return an identifier for this process's scheduler, unique across hosts and restarts (at most 45 chars)."""
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Claims due steps and runs them with a WakeContext."""

    def __init__(self, settings: SchedulerConfig, db: Any, clock: Any, context: WakeContext, messages: Any) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.context = context
        self.messages = messages
        self.name = scheduler_name()
        self._claim_count = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._queue: asyncio.Queue[Claim | None] = asyncio.Queue()
        self._claimer: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._claim_failures = 0
        self._claim_failure_logged_at = float("-inf")

    # --- claims -----------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        """Lease up to `limit` due steps of configured campaigns under a new token."""
        campaigns = tuple(self.context.flows)
        if not campaigns or limit <= 0:
            return []
        now = self.clock.now()
        self._claim_count += 1
        token = f"{self.name}:{self._claim_count}"
        async with self.db.transaction() as cur:
            await cur.execute(QUERIES.claim_due_steps, (now, now, campaigns, limit))
            rows = list(await cur.fetchall())
            if rows:
                run_ids = tuple(row["run_id"] for row in rows)
                await cur.execute(QUERIES.lease_steps, (now + self.settings.lease, token, run_ids))
        return [
            Claim(row["run_id"], row["campaign"], row["user_id"], row["step_index"], row["due_at"], token)
            for row in rows
        ]

    async def release(self, claims: list[Claim]) -> None:
        """Give back claims that were not run, so that any scheduler takes them at once."""
        by_token: dict[str, list[int]] = {}
        for claim in claims:
            by_token.setdefault(claim.token, []).append(claim.run_id)
        async with self.db.transaction() as cur:
            for token, run_ids in by_token.items():
                await cur.execute(QUERIES.release_steps, (tuple(run_ids), token))

    async def _release_quietly(self, claims: list[Claim]) -> None:
        try:
            await self.release(claims)
        except Exception as exc:  # noqa: BLE001 - the leases run out by themselves
            log.warning(
                "could not release claimed steps; other schedulers take them when the lease ends",
                extra={"action": "release_failed", "steps": len(claims), "error": str(exc)},
            )

    # --- running claims ----------------------------------------------------

    async def execute(self, claim: Claim) -> WakeOutcome | None:
        """Run one claim in its own transaction and report it; errors are logged, not raised."""
        outcomes = await self.execute_batch([claim])
        return outcomes[0] if outcomes else None

    async def execute_batch(self, claims: list[Claim]) -> list[WakeOutcome]:
        """Run claims of distinct users in one transaction and report them; errors are logged, not raised.

        If the transaction fails with an error that is not a temporary one,
        each claim is run again alone, so that one bad run cannot hold back
        the others of its batch.
        """
        now = self.clock.now()
        try:
            async with self.db.transaction() as cur:
                outcomes = await run_wakes(self.context, cur, claims, now)
        except Exception as exc:  # noqa: BLE001 - one step's error must not stop the scheduler
            if _is_transient(exc):
                SCHEDULER_RETRIES.inc(len(claims))
                ids = _ids(claims[0]) if len(claims) == 1 else {"run_ids": ",".join(str(c.run_id) for c in claims)}
                log.warning(
                    "%d steps rolled back after a temporary database error; they run again at the next poll",
                    len(claims),
                    extra={"action": "step_retry", **ids, "error": str(exc)},
                )
                await self._release_quietly(claims)
                return []
            if len(claims) > 1:
                outcomes = []
                for claim in claims:
                    outcomes += await self.execute_batch([claim])
                return outcomes
            # Not flow code (that fails the run in run_wakes): keep the lease,
            # so the step is tried again once the lease has passed.
            log.error(
                "step rolled back after an error outside flow code; it is tried again when its lease ends",
                exc_info=True,
                extra={"action": "step_error", **_ids(claims[0]), "lease_seconds": self.settings.lease.total_seconds()},
            )
            return []
        for outcome in outcomes:
            self._report(outcome, now)
        return outcomes

    def _report(self, outcome: WakeOutcome, now: datetime) -> None:
        """Log and count a committed wake, and wake the parts it gave work to."""
        claim = outcome.claim
        ids = {"campaign": claim.campaign, "run_id": claim.run_id, "user_id": claim.user_id}
        if outcome.skipped is not None:
            log.debug(
                "claimed step not run: %s", outcome.skipped,
                extra={"action": "step_skipped", **ids, "step_index": claim.step_index},
            )
            return
        if outcome.lag_seconds is not None:
            SCHEDULER_LAG.observe(outcome.lag_seconds)
        for index, kind in outcome.executed:
            STEPS.labels(kind, "ok").inc()
            log.debug(
                "step executed",
                extra={"action": "step_executed", **ids, "step_index": index, "kind": kind, "scheduler": self.name},
            )
        if outcome.failure is not None:
            STEPS.labels(outcome.failed_kind or "none", "failed").inc()
            log.error(
                "campaign run failed: %s", outcome.failure.message,
                exc_info=outcome.failure.exc_info,
                extra={"action": "run_failed", **ids, "step_index": claim.step_index + len(outcome.executed)},
            )
        elif outcome.divergence is not None:
            STEPS.labels(outcome.diverged_kind or "none", "diverged").inc()
            log.error(
                "campaign run diverged at %s", outcome.divergence,
                extra={"action": "run_diverged", **ids},
            )
        elif outcome.status == COMPLETED:
            log.info("campaign run completed", extra={"action": "run_completed", **ids})
        elif outcome.status == EXITED:
            log.info("campaign run exited: %s", outcome.end_reason, extra={"action": "run_exited", **ids})
        if outcome.status != ACTIVE and not outcome.ended_by_enrollment:
            RUNS_ENDED.labels(claim.campaign, outcome.status).inc()

        if outcome.messages_queued:
            self.messages.wake()
        # An update may have enrolled the user in a campaign, and a capped
        # wake leaves its next step due now: either way there is work at once.
        if outcome.users_updated or (outcome.next_due_at is not None and outcome.next_due_at <= now):
            self.wake()

    async def run_due(self, limit: int | None = None) -> int:
        """Claim and run due steps until none is due (or `limit` wakes ran); return how many ran.

        For tests and tools that drive the scheduler by hand with a FakeClock.
        """
        total = 0
        gate = asyncio.Semaphore(self.settings.workers)

        async def run_group(group: list[Claim]) -> None:
            async with gate:
                await self.execute_batch(group)

        while limit is None or total < limit:
            size = self.settings.batch_size if limit is None else min(self.settings.batch_size, limit - total)
            claims = await self.claim(size)
            if not claims:
                break
            await asyncio.gather(*(run_group(group) for group in group_by_user(claims)))
            total += len(claims)
        return total

    # --- background tasks ---------------------------------------------------

    def wake(self) -> None:
        """Make the claimer look for due steps now instead of at its next poll."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._claimer is not None

    async def start(self) -> None:
        if self._claimer is not None:
            return
        self._stopping = False
        self._claimer = asyncio.create_task(self._claim_loop(), name="segflowd-scheduler-claimer")
        self._workers = [
            asyncio.create_task(self._work_loop(), name=f"segflowd-scheduler-worker-{i}")
            for i in range(self.settings.workers)
        ]
        log.info(
            "scheduler started",
            extra={"action": "scheduler_start", "scheduler": self.name, "workers": self.settings.workers,
                   "campaigns": ",".join(sorted(self.context.flows))},
        )

    async def stop(self) -> None:
        """Stop claiming, give back claims not started, and finish the steps being run."""
        if self._claimer is None:
            return
        self._stopping = True
        self._wake.set()
        self._room.set()
        await self._claimer
        unstarted: list[Claim] = []
        while not self._queue.empty():
            claim = self._queue.get_nowait()
            if claim is not None:
                unstarted.append(claim)
        if unstarted:
            await self._release_quietly(unstarted)
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers)
        self._claimer, self._workers = None, []
        log.info(
            "scheduler stopped",
            extra={"action": "scheduler_stop", "scheduler": self.name, "released": len(unstarted)},
        )

    async def _claim_loop(self) -> None:
        batch = self.settings.batch_size
        poll = self.settings.poll_interval.total_seconds()
        while not self._stopping:
            # Keep at most two batches in hand, so that claimed steps do not
            # sit in the queue while their leases run out.
            if self._queue.qsize() > batch:
                self._room.clear()
                await self._wait(self._room, poll)
                continue
            self._wake.clear()
            try:
                claims = await self.claim(batch)
            except Exception as exc:  # noqa: BLE001 - keep polling; the database may come back
                self._claim_failed(exc)
                claims = []
            else:
                if self._claim_failures:
                    log.info(
                        "claiming due steps works again",
                        extra={"action": "claim_recovered", "scheduler": self.name, "failures": self._claim_failures},
                    )
                    self._claim_failures = 0
            for claim in claims:
                self._queue.put_nowait(claim)
            if len(claims) < batch:
                await self._wait(self._wake, poll)

    async def _work_loop(self) -> None:
        batch = self.settings.batch_size
        in_hand: list[Claim] = []
        while True:
            if not in_hand:
                claim = await self._queue.get()
                if claim is None:
                    return
                in_hand.append(claim)
            # Take what else is queued, up to one transaction's worth.
            while len(in_hand) < WAKES_PER_TRANSACTION and not self._queue.empty():
                claim = self._queue.get_nowait()
                if claim is None:
                    self._queue.put_nowait(None)  # the stop signal stays for the next get
                    break
                in_hand.append(claim)
            if self._queue.qsize() <= batch:
                self._room.set()
            group, in_hand = first_group_by_user(in_hand)
            await self.execute_batch(group)

    def _claim_failed(self, exc: Exception) -> None:
        """Log a failed claim: the first of a series, then at most once a minute with the count."""
        self._claim_failures += 1
        now = asyncio.get_running_loop().time()
        if self._claim_failures > 1 and now - self._claim_failure_logged_at < 60:
            return
        self._claim_failure_logged_at = now
        log.warning(
            "claiming due steps failed; retrying at every poll",
            exc_info=not _is_transient(exc),
            extra={"action": "claim_retry", "scheduler": self.name, "failures": self._claim_failures, "error": str(exc)},
        )

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        if self._stopping:
            return
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

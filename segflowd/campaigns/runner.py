"""Run claimed wakes of runs: replay each journal, then execute the new steps.

Everything a wake does happens in the one transaction the caller opens,
shared by the other wakes of its batch:
the journal rows, the queued messages, the user updates and the run's next
pending step (or its final status) commit together or not at all. That is
why a step is never executed twice: a crash before the commit leaves the
pending step as it was, and after the commit the pending step points past
the steps that ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from segflowd import users
from segflowd.campaigns import steps as kinds
from segflowd.campaigns.replay import FlowDriver, FlowFailure, JournalEntry, same_step
from segflowd.campaigns.runs import ACTIVE, COMPLETED, DIVERGED, EXITED, FAILED, end_run
from segflowd.campaigns.steps import Runtime, Step
from segflowd.config import Config
from segflowd.db import dump_json, load_json
from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.queries import QUERIES

# One wake runs at most this many steps that do not wait, then yields the
# worker and leaves the rest due at once, so a flow that sends in a loop
# cannot hold a worker or a transaction without bound.
MAX_STEPS_PER_WAKE = 50


@dataclass(frozen=True)
class Claim:
    """A pending step this process leased under `token`."""

    run_id: int
    campaign: str
    user_id: str
    step_index: int
    due_at: datetime
    token: str


@dataclass
class WakeOutcome:
    """The result of one wake, logged and counted after its transaction commits."""

    claim: Claim
    skipped: str | None = None
    executed: list[tuple[int, str]] = field(default_factory=list)
    status: str = ACTIVE
    next_due_at: datetime | None = None
    waiting_for: str | None = None
    messages_queued: int = 0
    users_updated: int = 0
    lag_seconds: float | None = None
    failure: FlowFailure | None = None
    failed_kind: str | None = None
    divergence: str | None = None
    diverged_kind: str | None = None
    end_reason: str | None = None
    # Set when enrollment, running inside this wake, ended the run and
    # counted it itself.
    ended_by_enrollment: bool = False


@dataclass
class WakeContext:
    """The inputs of a wake besides the transaction: config, loaded flows and the segment engine."""

    config: Config
    flows: dict[str, Callable[[Any, Any], Any]]
    segments: Any


async def _journals(cur: Any, run_ids: list[int]) -> dict[int, list[JournalEntry]]:
    journals: dict[int, list[JournalEntry]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return journals
    await cur.execute(QUERIES.select_journals, (tuple(run_ids),))
    for row in await cur.fetchall():
        journals[row["run_id"]].append(
            JournalEntry(
                index=row["step_index"],
                kind=row["kind"],
                signature=load_json(row["signature"]),
                result=load_json(row["result"]),
                user_snapshot=load_json(row["user_snapshot"]),
            )
        )
    return journals


async def _event_attributes(cur: Any, event_ids: list[int]) -> dict[int, Any]:
    if not event_ids:
        return {}
    await cur.execute(QUERIES.select_events_attributes, (tuple(event_ids),))
    return {row["id"]: load_json(row["attributes"]) for row in await cur.fetchall()}


@dataclass
class _Writes:
    """Rows a batch of wakes writes at the end, one statement per kind of write."""

    journal_rows: list[tuple[Any, ...]] = field(default_factory=list)
    schedules: list[tuple[Any, ...]] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)

    async def flush(self, cur: Any, now: datetime) -> None:
        if self.journal_rows:
            await cur.executemany(QUERIES.insert_journal_step, self.journal_rows)
        if self.schedules:
            await cur.executemany(QUERIES.schedule_next_steps, self.schedules)
        if self.completed:
            await cur.execute(QUERIES.complete_runs, (now, tuple(self.completed)))
            # One statement per step: a multi-row DELETE was seen on MariaDB
            # 10.11 to scan past its own rows under load and deadlock with
            # another batch, while a DELETE by primary key locks its row alone.
            for run_id in self.completed:
                await cur.execute(QUERIES.delete_pending_step, (run_id,))


async def run_wakes(context: WakeContext, cur: Any, claims: list[Claim], now: datetime) -> list[WakeOutcome]:
    """Run several claims of distinct users in the caller's transaction; return one outcome per claim.

    Rows are locked users first, in id order, then steps and runs, as
    ingest locks a user before its steps. Reads and writes are done once
    for the whole batch, which is what makes a batch cheaper than its
    claims one by one. A flow's failure ends its own run only; a database
    error aborts the batch, and the caller retries its claims one by one.
    """
    if len({claim.user_id for claim in claims}) != len(claims):
        raise ValueError("run_wakes needs claims of distinct users: a wake may change its user's other runs")
    await cur.execute(QUERIES.lock_step_users, (tuple(sorted(claim.user_id for claim in claims)),))
    users = {row["id"]: row for row in await cur.fetchall()}
    await cur.execute(QUERIES.lock_claimed_steps, (tuple(claim.run_id for claim in claims),))
    steps = {row["run_id"]: row for row in await cur.fetchall()}

    valid = [
        claim for claim in claims
        if claim.run_id in steps and steps[claim.run_id]["leased_by"] == claim.token
        and steps[claim.run_id]["step_index"] == claim.step_index
    ]
    journals = await _journals(cur, [claim.run_id for claim in valid if claim.step_index > 0])
    events = await _event_attributes(
        cur, [steps[claim.run_id]["woken_event_id"] for claim in valid if steps[claim.run_id]["woken_event_id"]]
    )

    writes = _Writes()
    outcomes = []
    for claim in claims:
        step = steps.get(claim.run_id)
        woken = None
        if step is not None and step["woken_event_id"] is not None:
            # An event deleted since it woke the step still arrived; its attributes are gone.
            woken = events.get(step["woken_event_id"], {})
        outcome = await _wake(
            context, cur, claim, users.get(claim.user_id), step, journals.get(claim.run_id, []), woken, writes, now
        )
        outcomes.append(outcome)
    await writes.flush(cur, now)
    return outcomes


async def run_wake(context: WakeContext, cur: Any, claim: Claim, now: datetime) -> WakeOutcome:
    """Run one claim in the caller's transaction; see run_wakes."""
    [outcome] = await run_wakes(context, cur, [claim], now)
    return outcome


async def _wake(
    context: WakeContext,
    cur: Any,
    claim: Claim,
    user_row: dict[str, Any] | None,
    pending: dict[str, Any] | None,
    journal: list[JournalEntry],
    woken: Any,
    writes: _Writes,
    now: datetime,
) -> WakeOutcome:
    """Check the claim still holds its lease, then replay and advance the run; see the module docstring."""
    outcome = WakeOutcome(claim)
    if pending is None:
        outcome.skipped = "the run ended before this step ran"
        return outcome
    if pending["leased_by"] != claim.token or pending["step_index"] != claim.step_index:
        outcome.skipped = "another scheduler took the step after this claim's lease ran out"
        return outcome
    if pending["status"] != ACTIVE:
        # A pending step belongs to an active run; anything else is left over
        # from rows changed outside segflowd and would be claimed forever.
        await cur.execute(QUERIES.delete_pending_step, (claim.run_id,))
        state = "missing" if pending["status"] is None else pending["status"]
        outcome.skipped = f"the run is {state}, so its pending step was removed"
        return outcome

    outcome.lag_seconds = max(0.0, (now - pending["due_at"]).total_seconds())
    if user_row is None:
        outcome.end_reason = "the user no longer exists"
        await end_run(cur, claim.run_id, EXITED, now, outcome.end_reason)
        outcome.status = EXITED
        return outcome

    user = {**load_json(user_row["attributes"]), "id": user_row["id"]}
    if len(journal) != claim.step_index:
        message = (
            f"the journal holds {len(journal)} steps but the pending step is step {claim.step_index}; "
            "the run's rows were changed outside segflowd"
        )
        return await _fail(cur, outcome, FlowFailure(message), None, now)

    driver = FlowDriver(
        context.flows[claim.campaign],
        Runtime(claim.campaign, claim.run_id, claim.user_id),
        journal[0].user_snapshot if journal else user,
    )
    try:
        return await _advance(context, cur, outcome, driver, journal, pending, woken, user, writes, now)
    finally:
        driver.close()


async def _advance(
    context: WakeContext,
    cur: Any,
    outcome: WakeOutcome,
    driver: FlowDriver,
    journal: list[JournalEntry],
    pending: dict[str, Any],
    woken: Any,
    user: dict[str, Any],
    writes: _Writes,
    now: datetime,
) -> WakeOutcome:
    claim = outcome.claim
    current_kind: str | None = None
    try:
        # Replay: feed the flow each recorded result and the user as they
        # were when each step first ran, checking it yields the same steps.
        step = driver.advance(None)
        for entry in journal:
            if step is None or not same_step(step, entry):
                return await _diverge(cur, outcome, entry, step, now)
            result = entry.result
            if entry.index == len(journal) - 1 and pending["wait_event"] is not None:
                result = woken
                if result is not None:
                    await cur.execute(QUERIES.set_journal_result, (dump_json(result), claim.run_id, entry.index))
            following = entry.index + 1
            driver.user.replace(journal[following].user_snapshot if following < len(journal) else user)
            step = driver.advance(result)

        # New steps: execute each until the flow waits, returns or fails.
        index = len(journal)
        while True:
            if step is None:
                writes.completed.append(claim.run_id)
                outcome.status = COMPLETED
                return outcome
            current_kind = step.kind
            snapshot = driver.user.snapshot()
            result = None
            if step.kind == kinds.SEND_EMAIL:
                await _send_email(context, cur, claim, index, step, snapshot, now)
                outcome.messages_queued += 1
            elif step.kind == kinds.UPDATE_USER:
                user = await _update_user(context, cur, claim, step, now)
                outcome.users_updated += 1
            writes.journal_rows.append(
                (claim.run_id, index, step.kind, dump_json(step.signature), None, dump_json(snapshot), now)
            )
            outcome.executed.append((index, step.kind))
            index += 1
            current_kind = None

            if step.kind in (kinds.WAIT, kinds.WAIT_FOR_EVENT):
                return _schedule_wait(writes, outcome, index, step, now)
            if step.kind == kinds.UPDATE_USER and await _run_status(cur, claim.run_id) != ACTIVE:
                # The update moved the user out of this dynamic campaign and
                # enrollment, running inside this transaction, exited the run.
                outcome.status = EXITED
                outcome.end_reason = "update_user moved the user out of the campaign"
                outcome.ended_by_enrollment = True
                return outcome
            if len(outcome.executed) >= MAX_STEPS_PER_WAKE:
                writes.schedules.append((claim.run_id, claim.campaign, claim.user_id, index, now, None))
                outcome.next_due_at = now
                return outcome
            driver.user.replace(user)
            step = driver.advance(result)
    except FlowFailure as failure:
        return await _fail(cur, outcome, failure, current_kind, now)


async def _send_email(
    context: WakeContext, cur: Any, claim: Claim, index: int, step: Step, snapshot: dict[str, Any], now: datetime
) -> None:
    template = step.signature["template"]
    if template not in context.config.templates:
        defined = ", ".join(sorted(context.config.templates)) or "none"
        raise FlowFailure(
            f"send_email({template!r}): template {template!r} is not defined in the config's "
            f"templates; defined templates: {defined}"
        )
    await queue_message(
        cur,
        key=campaign_message_key(claim.run_id, index),
        kind="campaign",
        user_id=claim.user_id,
        template=template,
        context=message_context(snapshot, campaign=claim.campaign, params=step.signature["params"]),
        now=now,
        campaign=claim.campaign,
        run_id=claim.run_id,
    )


async def _update_user(context: WakeContext, cur: Any, claim: Claim, step: Step, now: datetime) -> dict[str, Any]:
    """Merge the attributes, re-evaluate the user's segments, and return the user as stored now."""
    await users.update_user(cur, claim.user_id, step.signature["attributes"], now)
    await context.segments.evaluate_user(cur, claim.user_id)
    updated = await users.get_user(cur, claim.user_id)
    if updated is None:  # pragma: no cover - the user row is locked by this transaction
        raise FlowFailure(f"update_user(): user {claim.user_id!r} disappeared during the update")
    return updated


async def _run_status(cur: Any, run_id: int) -> str:
    await cur.execute(QUERIES.select_run_status, (run_id,))
    row = await cur.fetchone()
    return row["status"] if row else EXITED


def _schedule_wait(writes: _Writes, outcome: WakeOutcome, index: int, step: Step, now: datetime) -> WakeOutcome:
    if step.kind == kinds.WAIT:
        seconds, event = step.signature["seconds"], None
    else:
        seconds, event = step.signature["timeout_seconds"], step.signature["event"]
    due_at = now + timedelta(seconds=seconds)
    claim = outcome.claim
    writes.schedules.append((claim.run_id, claim.campaign, claim.user_id, index, due_at, event))
    outcome.next_due_at = due_at
    outcome.waiting_for = event
    return outcome


async def _diverge(
    cur: Any, outcome: WakeOutcome, entry: JournalEntry, step: Step | None, now: datetime
) -> WakeOutcome:
    yielded = "returned" if step is None else f"yielded {step.describe()}"
    outcome.divergence = (
        f"step {entry.index}: the flow {yielded} but the journal recorded {entry.describe()}; "
        "the flow's code changed under this run, so it stops here and sends nothing more"
    )
    outcome.diverged_kind = step.kind if step is not None else "none"
    await end_run(cur, outcome.claim.run_id, DIVERGED, now, outcome.divergence)
    outcome.status = DIVERGED
    return outcome


async def _fail(
    cur: Any, outcome: WakeOutcome, failure: FlowFailure, kind: str | None, now: datetime
) -> WakeOutcome:
    outcome.failure = failure
    outcome.failed_kind = kind or "none"
    await end_run(cur, outcome.claim.run_id, FAILED, now, failure.details())
    outcome.status = FAILED
    return outcome

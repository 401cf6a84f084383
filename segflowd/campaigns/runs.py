"""Campaign runs in the database: enrollment, final statuses, and a user's runs.

Every function here runs inside the caller's transaction, so a run starts
or ends together with the membership change or step that caused it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segflowd.campaigns.metrics import RUNS_ENDED, RUNS_STARTED
from segflowd.config import CampaignConfig
from segflowd.queries import QUERIES
from segflowd.timestamps import format_timestamp

log = logging.getLogger(__name__)

ACTIVE = "active"
COMPLETED = "completed"
EXITED = "exited"
FAILED = "failed"
DIVERGED = "diverged"
STATUSES = (ACTIVE, COMPLETED, EXITED, FAILED, DIVERGED)

# The `error` column is TEXT (64 KiB); a longer traceback keeps its end.
_MAX_ERROR_CHARS = 60_000


def run_key(campaign: str, user_id: str) -> str:
    """The static and active key of a user's run of a campaign."""
    return f"{campaign}:{user_id}"


def qualifies(campaign: CampaignConfig, segments: set[str]) -> bool:
    """True if a user in `segments` is in all of the campaign's segments and none of its excluded ones."""
    return set(campaign.segments) <= segments and not (set(campaign.exclude) & segments)


def touches(campaign: CampaignConfig, changed: set[str]) -> bool:
    """True if a change of these segments can change whether a user qualifies."""
    return bool(changed & (set(campaign.segments) | set(campaign.exclude)))


async def user_segments(cur: Any, user_id: str) -> set[str]:
    await cur.execute(QUERIES.select_user_segment_names, (user_id,))
    return {row["segment"] for row in await cur.fetchall()}


@dataclass(frozen=True)
class EnrollmentRun:
    id: int
    campaign: str
    status: str
    static: bool


async def enrollment_runs(cur: Any, user_id: str) -> list[EnrollmentRun]:
    """A user's live runs and static runs of any status."""
    await cur.execute(QUERIES.select_enrollment_runs, (user_id,))
    return [
        EnrollmentRun(row["id"], row["campaign"], row["status"], row["static_key"] is not None)
        for row in await cur.fetchall()
    ]


async def start_run(cur: Any, campaign: CampaignConfig, user_id: str, now: datetime) -> int | None:
    """Start a run with its first step due now; return its id, or None if the unique keys show that one exists."""
    key = run_key(campaign.name, user_id)
    static_key = key if campaign.behavior == "static" else None
    await cur.execute(QUERIES.insert_run, (campaign.name, user_id, static_key, key, now))
    if cur.rowcount != 1:
        return None
    run_id = int(cur.lastrowid)
    await cur.execute(QUERIES.insert_pending_step, (run_id, campaign.name, user_id, now))
    RUNS_STARTED.labels(campaign.name).inc()
    log.info(
        "campaign run started",
        extra={"action": "run_started", "campaign": campaign.name, "user_id": user_id, "run_id": run_id},
    )
    return run_id


async def end_run(cur: Any, run_id: int, status: str, now: datetime, error: str | None = None) -> bool:
    """Give an active run its final status and delete its pending step; return False if it had ended."""
    if error is not None and len(error) > _MAX_ERROR_CHARS:
        error = "..." + error[-_MAX_ERROR_CHARS:]
    await cur.execute(QUERIES.end_run, (status, now, error, run_id))
    ended = cur.rowcount == 1
    await cur.execute(QUERIES.delete_pending_step, (run_id,))
    return ended


async def enroll_user(
    cur: Any, campaigns: list[CampaignConfig], user_id: str, segments: set[str], now: datetime
) -> tuple[list[int], list[int]]:
    """Start and exit the user's runs of `campaigns` to match `segments`; return (started, exited) run ids.

    Static: start if qualifying and never run. Dynamic: start if qualifying
    and none active; exit the active run once the user no longer qualifies.
    """
    runs = await enrollment_runs(cur, user_id)
    started: list[int] = []
    exited: list[int] = []
    for campaign in campaigns:
        mine = [run for run in runs if run.campaign == campaign.name]
        active = [run for run in mine if run.status == ACTIVE]
        if qualifies(campaign, segments):
            if active:
                continue
            # A static run of any status blocks a new one, even if the
            # campaign has since become dynamic; the reverse does not.
            if campaign.behavior == "static" and any(run.static for run in mine):
                continue
            run_id = await start_run(cur, campaign, user_id, now)
            if run_id is not None:
                started.append(run_id)
        elif campaign.behavior == "dynamic":
            for run in active:
                if await end_run(cur, run.id, EXITED, now, "the user no longer qualifies for the campaign"):
                    exited.append(run.id)
                    RUNS_ENDED.labels(campaign.name, EXITED).inc()
                    log.info(
                        "campaign run exited: the user no longer qualifies",
                        extra={"action": "run_exited", "campaign": campaign.name, "user_id": user_id, "run_id": run.id},
                    )
    return started, exited


async def stop_user_runs(cur: Any, user_id: str, now: datetime) -> list[int]:
    """End a deleted user's live runs as exited and delete their journal; return the ended run ids.

    The run rows stay (without attribute copies), so a static campaign is
    not sent again if a user with the same id is created later.
    """
    await cur.execute(QUERIES.lock_active_user_runs, (user_id,))
    rows = list(await cur.fetchall())
    for row in rows:
        await end_run(cur, row["id"], EXITED, now, "the user was deleted")
        RUNS_ENDED.labels(row["campaign"], EXITED).inc()
        log.info(
            "campaign run exited: the user was deleted",
            extra={"action": "run_exited", "campaign": row["campaign"], "user_id": user_id, "run_id": row["id"]},
        )
    await cur.execute(QUERIES.delete_user_journal, (user_id,))
    return [row["id"] for row in rows]


async def runs_of(cur: Any, user_id: str) -> list[dict[str, Any]]:
    """The user's runs, newest first, as JSON-ready dicts."""
    await cur.execute(QUERIES.select_user_runs, (user_id,))
    runs = []
    for row in await cur.fetchall():
        runs.append(
            {
                "campaign": row["campaign"],
                "run_id": row["id"],
                "status": row["status"],
                "started_at": format_timestamp(row["started_at"]),
                "ended_at": format_timestamp(row["ended_at"]) if row["ended_at"] else None,
                "next_step": row["step_index"],
                "next_step_due_at": format_timestamp(row["due_at"]) if row["due_at"] else None,
                "waiting_for_event": row["wait_event"],
                "error": row["error"],
            }
        )
    return runs


# Segment names are never empty (the config rejects them), so this list
# matches nothing where a campaign has no excluded segments: `IN ()` is
# not valid SQL.
_NO_SEGMENTS = ("",)


async def users_to_enroll(cur: Any, campaign: CampaignConfig, limit: int) -> list[str]:
    """Qualifying users who never had a run of the campaign, up to `limit`."""
    await cur.execute(
        QUERIES.select_qualifying_users_without_run,
        (campaign.segments, campaign.exclude or _NO_SEGMENTS, campaign.name, len(set(campaign.segments)), limit),
    )
    return [row["user_id"] for row in await cur.fetchall()]


async def runs_to_exit(cur: Any, campaign: CampaignConfig, limit: int) -> list[tuple[int, str]]:
    """Active runs of a campaign whose user no longer qualifies, up to `limit`."""
    await cur.execute(
        QUERIES.select_active_runs_not_qualifying,
        (campaign.name, campaign.segments, len(set(campaign.segments)), campaign.exclude or _NO_SEGMENTS, limit),
    )
    return [(row["id"], row["user_id"]) for row in await cur.fetchall()]

"""`segflowd status`: campaign runs, due steps and messages, read from the database."""

from __future__ import annotations

from typing import Any

from segflowd.campaigns.runs import STATUSES
from segflowd.clock import Clock
from segflowd.config import Config
from segflowd.queries import QUERIES

_MESSAGE_STATUSES = ("queued", "sent", "failed", "suppressed")


def format_seconds(seconds: float) -> str:
    """Format seconds as a short duration: 850ms, 12.3s, 4m05s, 2h10m, 3d04h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


async def collect_status(config: Config, db: Any, clock: Any = None) -> dict[str, Any]:
    """Counts for `segflowd status`, as plain data."""
    now = (clock or Clock()).now()
    async with db.transaction() as cur:
        await cur.execute(QUERIES.count_runs_by_status)
        run_rows = list(await cur.fetchall())
        await cur.execute(QUERIES.count_due_steps, (now, now))
        due = await cur.fetchone()
        await cur.execute(QUERIES.count_waiting_steps, (now,))
        waiting = await cur.fetchone()
        await cur.execute(QUERIES.count_messages_by_status)
        message_rows = list(await cur.fetchall())

    campaigns: dict[str, dict[str, int]] = {name: dict.fromkeys(STATUSES, 0) for name in config.campaigns}
    for row in run_rows:
        campaigns.setdefault(row["campaign"], dict.fromkeys(STATUSES, 0))[row["status"]] = int(row["runs"])
    messages = dict.fromkeys(_MESSAGE_STATUSES, 0)
    for row in message_rows:
        messages[row["status"]] = int(row["messages"])
    oldest = due["oldest_due_at"]
    return {
        "campaigns": campaigns,
        "unknown_campaigns": sorted(set(campaigns) - set(config.campaigns)),
        "steps_due": int(due["due"]),
        "steps_leased": int(due["leased"]),
        "steps_waiting": int(waiting["waiting"]),
        "oldest_due_lag_seconds": (now - oldest).total_seconds() if oldest is not None else None,
        "messages": messages,
    }


async def print_status(config: Config, db: Any, clock: Any = None) -> int:
    """Print runs per campaign and status, steps due now with the oldest one's lag, and messages by status."""
    status = await collect_status(config, db, clock)
    width = max([len("campaign"), *(len(name) for name in status["campaigns"])])
    print("campaign runs:")
    print("  " + "campaign".ljust(width) + "".join(f"  {name:>9}" for name in STATUSES))
    for name, counts in sorted(status["campaigns"].items()):
        note = "  (not in the config)" if name in status["unknown_campaigns"] else ""
        print("  " + name.ljust(width) + "".join(f"  {counts[s]:>9}" for s in STATUSES) + note)
    if not status["campaigns"]:
        print("  (no campaigns configured and no runs stored)")

    lag = status["oldest_due_lag_seconds"]
    lag_text = f", oldest due {format_seconds(lag)} ago" if lag is not None else ""
    print(
        f"steps: {status['steps_due']} due now ({status['steps_leased']} being run{lag_text}), "
        f"{status['steps_waiting']} waiting"
    )
    print("messages: " + ", ".join(f"{count} {name}" for name, count in status["messages"].items()))
    return 0

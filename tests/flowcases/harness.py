"""Helpers for campaign tests: configs, a rule-based segment engine, and table readers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from segflowd.campaigns.engine import CampaignEngine
from segflowd.clock import FakeClock
from segflowd.config import Config, load_config
from segflowd.db import Database, load_json
from segflowd.model import MembershipChanges
from segflowd.users import get_user, upsert_user

START = datetime(2026, 3, 2, 9, 0, 0)

TEMPLATES = ("welcome", "complete-profile", "first-purchase-nudge", "reminder", "goodbye")

# The segment SQL only has to pass config validation: the tests decide
# membership with RuleSegments or by writing segment_members rows.
SEGMENTS = {
    "all-users": "SELECT id FROM users",
    "vip": "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.vip') = true",
    "trial": "SELECT id FROM users WHERE JSON_UNQUOTE(JSON_EXTRACT(attributes, '$.plan')) = 'trial'",
    "unsubscribed": "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.unsubscribed') = true",
}

RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "all-users": lambda user: True,
    "vip": lambda user: user.get("vip") is True,
    "trial": lambda user: user.get("plan") == "trial",
    "unsubscribed": lambda user: user.get("unsubscribed") is True,
}


def campaign_config(write_config: Callable[..., Any], campaigns: dict[str, dict[str, Any]], **sections: Any) -> Config:
    """Load a config with the test segments and templates plus these campaigns."""
    files = {f"templates/{name}.html.j2": f"<p>{name} {{{{ user.id }}}}</p>\n" for name in TEMPLATES}
    overrides: dict[str, Any] = {
        "segments": {name: {"sql": sql} for name, sql in SEGMENTS.items()},
        "templates": {
            name: {"subject": f"{name} subject", "html": f"templates/{name}.html.j2"} for name in TEMPLATES
        },
        "campaigns": campaigns,
    }
    overrides.update(sections)
    return load_config(write_config(overrides, files=files))


class RecordingMessages:
    """The part of MessageService the campaign engine uses: `wake()`."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class RuleSegments:
    """A segment engine whose membership comes from Python rules on user attributes.

    It stores membership in segment_members and calls its listeners with the
    changes, as the real engine does, so enrollment and update_user run
    their whole path against the database.
    """

    def __init__(self, clock: FakeClock, rules: dict[str, Callable[[dict[str, Any]], bool]] | None = None) -> None:
        self.clock = clock
        self.rules = dict(RULES if rules is None else rules)
        self.listeners: list[Any] = []
        self.calls = 0

    async def evaluate_user(self, cur: Any, user_id: str, *, event_name: str | None = None) -> MembershipChanges:
        self.calls += 1
        now = self.clock.now()
        user = await get_user(cur, user_id)
        await cur.execute("SELECT segment FROM segment_members WHERE user_id = %s", (user_id,))
        current = {row["segment"] for row in await cur.fetchall()}
        expected = {name for name, rule in self.rules.items() if user is not None and rule(user)}
        changes = MembershipChanges(entered=sorted(expected - current), left=sorted(current - expected))
        for name in changes.entered:
            await cur.execute(
                "INSERT INTO segment_members (segment, user_id, entered_at) VALUES (%s, %s, %s)", (name, user_id, now)
            )
        for name in changes.left:
            await cur.execute("DELETE FROM segment_members WHERE segment = %s AND user_id = %s", (name, user_id))
        if changes:
            for listener in self.listeners:
                await listener(cur, user_id, changes, now)
        return changes


def make_engine(config: Config, db: Database, clock: FakeClock, segments: Any = None) -> CampaignEngine:
    """A CampaignEngine on RuleSegments, registered as its listener like Services.build does."""
    segments = segments if segments is not None else RuleSegments(clock)
    engine = CampaignEngine(config, db, clock, segments, RecordingMessages())
    segments.listeners.append(engine.on_membership_change)
    return engine


async def put_user(engine: CampaignEngine, user_id: str, **attributes: Any) -> MembershipChanges:
    """Create or update a user and evaluate their segments, as ingest does."""
    async with engine.db.transaction() as cur:
        await upsert_user(cur, user_id, attributes, engine.clock.now())
        return await engine.segments.evaluate_user(cur, user_id)


async def set_membership(engine: CampaignEngine, user_id: str, segments: set[str]) -> MembershipChanges:
    """Write segment_members rows for a user directly and tell the engine what changed."""
    now = engine.clock.now()
    async with engine.db.transaction() as cur:
        await upsert_user(cur, user_id, {}, now)
        await cur.execute("SELECT segment FROM segment_members WHERE user_id = %s", (user_id,))
        current = {row["segment"] for row in await cur.fetchall()}
        changes = MembershipChanges(entered=sorted(segments - current), left=sorted(current - segments))
        for name in changes.entered:
            await cur.execute(
                "INSERT INTO segment_members (segment, user_id, entered_at) VALUES (%s, %s, %s)", (name, user_id, now)
            )
        for name in changes.left:
            await cur.execute("DELETE FROM segment_members WHERE segment = %s AND user_id = %s", (name, user_id))
        await engine.on_membership_change(cur, user_id, changes, now)
    return changes


async def runs(db: Database, user_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, campaign, user_id, status, static_key, active_key, started_at, ended_at, error FROM campaign_runs"
    args: tuple[Any, ...] = ()
    if user_id is not None:
        sql += " WHERE user_id = %s"
        args = (user_id,)
    return await db.fetch_all(sql + " ORDER BY id", args)


async def journal(db: Database, run_id: int) -> list[dict[str, Any]]:
    rows = await db.fetch_all(
        "SELECT step_index, kind, signature, result, user_snapshot, executed_at FROM run_steps "
        "WHERE run_id = %s ORDER BY step_index",
        (run_id,),
    )
    for row in rows:
        row["signature"] = load_json(row["signature"])
        row["result"] = load_json(row["result"])
        row["user_snapshot"] = load_json(row["user_snapshot"])
    return rows


async def pending(db: Database, run_id: int) -> dict[str, Any] | None:
    return await db.fetch_one("SELECT * FROM pending_steps WHERE run_id = %s", (run_id,))


async def messages(db: Database, user_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT message_key, kind, user_id, template, campaign, run_id, context, status FROM messages"
    args: tuple[Any, ...] = ()
    if user_id is not None:
        sql += " WHERE user_id = %s"
        args = (user_id,)
    rows = await db.fetch_all(sql + " ORDER BY id", args)
    for row in rows:
        row["context"] = load_json(row["context"])
    return rows


async def templates_sent(db: Database, user_id: str) -> list[str]:
    return [row["template"] for row in await messages(db, user_id)]

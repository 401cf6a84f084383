"""The messages table: claiming due messages under a lease and recording outcomes.

Each function runs the SQL block of the same name in `sql/messages.sql`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segflowd.db import Database, load_json
from segflowd.queries import QUERIES


@dataclass
class ClaimedMessage:
    """A message this process holds a lease on; `lease_until` is the claim's token."""

    id: int
    key: str
    kind: str
    user_id: str
    template: str
    campaign: str | None
    run_id: int | None
    event_id: int | None
    context: dict[str, Any]
    attempts: int
    message_id_header: str | None
    created_at: datetime
    lease_until: datetime
    # The user's attributes now, or None if the user no longer exists.
    current_user: dict[str, Any] | None

    def log_fields(self) -> dict[str, Any]:
        """Return the ids that every log record about this message carries."""
        fields: dict[str, Any] = {
            "message_key": self.key,
            "message_id": self.id,
            "user_id": self.user_id,
            "template": self.template,
        }
        if self.campaign is not None:
            fields["campaign"] = self.campaign
        if self.run_id is not None:
            fields["run_id"] = self.run_id
        if self.event_id is not None:
            fields["event_id"] = self.event_id
        return fields


async def claim_messages(db: Database, now: datetime, lease_until: datetime, limit: int) -> list[ClaimedMessage]:
    """Lease up to `limit` due messages that no other process holds, in one transaction."""
    async with db.transaction() as cur:
        await cur.execute(QUERIES.claim_messages, (now, limit))
        rows = list(await cur.fetchall())
        if not rows:
            return []
        ids = tuple(row["id"] for row in rows)
        await cur.execute(QUERIES.lease_messages, (lease_until, lease_until, ids))
        user_ids = tuple({row["user_id"] for row in rows})
        await cur.execute(QUERIES.get_recipients_state, (user_ids,))
        users = {row["id"]: {**load_json(row["attributes"]), "id": row["id"]} for row in await cur.fetchall()}
    return [
        ClaimedMessage(
            id=row["id"],
            key=row["message_key"],
            kind=row["kind"],
            user_id=row["user_id"],
            template=row["template"],
            campaign=row["campaign"],
            run_id=row["run_id"],
            event_id=row["event_id"],
            context=load_json(row["context"]) or {},
            attempts=row["attempts"],
            message_id_header=row["message_id_header"],
            created_at=row["created_at"],
            lease_until=lease_until,
            current_user=users.get(row["user_id"]),
        )
        for row in rows
    ]


async def mark_message_sent(
    db: Database, message: ClaimedMessage, provider_message_id: str, message_id_header: str, now: datetime
) -> bool:
    """Record acceptance by the provider; False if the lease was lost to another process."""
    async with db.transaction() as cur:
        await cur.execute(
            QUERIES.mark_message_sent,
            (provider_message_id[:255], message_id_header, now, message.id, message.lease_until),
        )
        return cur.rowcount == 1


async def mark_message_retry(
    db: Database, message: ClaimedMessage, error: str, message_id_header: str | None, next_attempt_at: datetime
) -> bool:
    """Record a temporary failure and the time of the next attempt; False if the lease was lost."""
    async with db.transaction() as cur:
        await cur.execute(
            QUERIES.mark_message_retry,
            (error, message_id_header, next_attempt_at, message.id, message.lease_until),
        )
        return cur.rowcount == 1


async def mark_message_failed(
    db: Database, message: ClaimedMessage, error: str, message_id_header: str | None, *, attempted: bool
) -> bool:
    """Record a permanent failure; `attempted` is True if the provider was asked."""
    async with db.transaction() as cur:
        await cur.execute(
            QUERIES.mark_message_failed,
            (1 if attempted else 0, error, message_id_header, message.id, message.lease_until),
        )
        return cur.rowcount == 1


async def mark_message_suppressed(db: Database, message: ClaimedMessage, reason: str) -> bool:
    """Record that the message is not sent on purpose."""
    async with db.transaction() as cur:
        await cur.execute(QUERIES.mark_message_suppressed, (reason, message.id, message.lease_until))
        return cur.rowcount == 1


async def release_message(db: Database, message: ClaimedMessage, now: datetime) -> bool:
    """Give back a claimed message that was not sent, due at `now`."""
    async with db.transaction() as cur:
        await cur.execute(QUERIES.release_message, (now, message.id, message.lease_until))
        return cur.rowcount == 1


async def count_queued_messages(db: Database) -> int:
    row = await db.fetch_one(QUERIES.count_queued_messages)
    return int(row["queued"]) if row else 0


async def get_message(db: Database, key: str) -> dict[str, Any] | None:
    """Return one message's row by key, with its context decoded."""
    row = await db.fetch_one(QUERIES.get_message, (key,))
    if row is not None:
        row["context"] = load_json(row["context"])
    return row

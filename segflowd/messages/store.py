"""The messages table: claiming due messages under a lease and recording outcomes.

Each function runs the SQL block of the same name in `sql/messages.sql`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segflowd.db import ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, Database, error_code, load_json
from segflowd.queries import QUERIES

# Tries of one outcome transaction that hit a deadlock or a lock wait timeout.
_ATTEMPTS = 3


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


class OutcomeWriter:
    """Commits the outcomes of concurrent sends in shared transactions (group commit).

    Each update waits for the commit of the transaction that carries it, so
    an outcome is durable when `update` returns, as with one transaction
    per update. While one transaction commits, the updates that arrive
    meanwhile gather for the next one. In bench/messages.py this cut the
    database server's CPU per message by about a fifth. Every update is guarded by its
    claim's lease token, so running a batch again after a deadlock is safe.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def update(self, sql: str, args: tuple[Any, ...]) -> bool:
        """Run one single-row UPDATE in the next shared transaction; True if it changed the row."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((sql, args, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # One turn of the event loop lets the other senders add their updates.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._run(batch)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting sender
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, _, future), changed in zip(batch, results):
                    if not future.done():
                        future.set_result(changed)

    async def _run(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[bool]]]) -> list[bool]:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self.db.transaction() as cur:
                    results = []
                    for sql, args, _ in batch:
                        await cur.execute(sql, args)
                        results.append(cur.rowcount == 1)
                return results
            except Exception as exc:
                if error_code(exc) not in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT) or attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")


async def mark_message_sent(
    writer: OutcomeWriter, message: ClaimedMessage, provider_message_id: str, message_id_header: str, now: datetime
) -> bool:
    """Record acceptance by the provider; False if the lease was lost to another process."""
    return await writer.update(
        QUERIES.mark_message_sent,
        (provider_message_id[:255], message_id_header, now, message.id, message.lease_until),
    )


async def mark_message_retry(
    writer: OutcomeWriter, message: ClaimedMessage, error: str, message_id_header: str | None, next_attempt_at: datetime
) -> bool:
    """Record a temporary failure and the time of the next attempt; False if the lease was lost."""
    return await writer.update(
        QUERIES.mark_message_retry,
        (error, message_id_header, next_attempt_at, message.id, message.lease_until),
    )


async def mark_message_failed(
    writer: OutcomeWriter, message: ClaimedMessage, error: str, message_id_header: str | None, *, attempted: bool
) -> bool:
    """Record a permanent failure; `attempted` is True if the provider was asked."""
    return await writer.update(
        QUERIES.mark_message_failed,
        (1 if attempted else 0, error, message_id_header, message.id, message.lease_until),
    )


async def mark_message_suppressed(writer: OutcomeWriter, message: ClaimedMessage, reason: str) -> bool:
    """Record that the message is not sent on purpose."""
    return await writer.update(QUERIES.mark_message_suppressed, (reason, message.id, message.lease_until))


async def release_message(writer: OutcomeWriter, message: ClaimedMessage, now: datetime) -> bool:
    """Give back a claimed message that was not sent, due at `now`."""
    return await writer.update(QUERIES.release_message, (now, message.id, message.lease_until))


async def count_queued_messages(db: Database) -> int:
    row = await db.fetch_one(QUERIES.count_queued_messages)
    return int(row["queued"]) if row else 0


async def get_message(db: Database, key: str) -> dict[str, Any] | None:
    """Return one message's row by key, with its context decoded."""
    row = await db.fetch_one(QUERIES.get_message, (key,))
    if row is not None:
        row["context"] = load_json(row["context"])
    return row

"""Queue a logical message inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segflowd.db import dump_json
from segflowd.queries import QUERIES


@dataclass(frozen=True)
class QueuedMessage:
    key: str
    inserted: bool


def campaign_message_key(run_id: int, step_index: int) -> str:
    return f"campaign:{run_id}:{step_index}"


def transaction_message_key(transaction: str, event_id: int) -> str:
    return f"transaction:{transaction}:{event_id}"


async def queue_message(
    cur: Any,
    *,
    key: str,
    kind: str,
    user_id: str,
    template: str,
    context: dict[str, Any],
    now: datetime,
    campaign: str | None = None,
    run_id: int | None = None,
    event_id: int | None = None,
    status: str = "queued",
) -> QueuedMessage:
    """Insert the message under `key` in the caller's transaction; a duplicate key inserts nothing.

    `context` is the JSON-serialisable template context besides `user`,
    which delivery reads as it was stored here.
    """
    await cur.execute(
        QUERIES.insert_message,
        (key, kind, user_id, template, campaign, run_id, event_id, dump_json(context), status, now, now),
    )
    return QueuedMessage(key=key, inserted=cur.rowcount == 1)

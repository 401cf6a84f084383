"""Queue a logical message inside the caller's transaction.

A message is committed once, under a unique key, with everything needed to
render it later: delivery renders from this stored context, so a retry
produces the same message. The stored context is

    {"user": {attributes..., "id": ...},        # as of queueing
     "event": {"id", "name", "attributes", "timestamp"} or null,
     "campaign": name or null,
     "params": {extra send_email keywords}}

`message_context` builds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from segflowd.db import dump_json
from segflowd.messages.metrics import MESSAGES
from segflowd.model import Event
from segflowd.queries import QUERIES
from segflowd.timestamps import format_timestamp

log = logging.getLogger(__name__)

# The message kinds of the `messages.kind` column.
CAMPAIGN = "campaign"
TRANSACTIONAL = "transactional"

# Names the template context defines itself; a send_email keyword cannot use them.
RESERVED_NAMES = frozenset({"user", "event", "campaign", "unsubscribe_url", "params"})


@dataclass(frozen=True)
class QueuedMessage:
    key: str
    inserted: bool
    status: str = "queued"


def campaign_message_key(run_id: int, step_index: int) -> str:
    return f"campaign:{run_id}:{step_index}"


def transaction_message_key(transaction: str, event_id: int) -> str:
    return f"transaction:{transaction}:{event_id}"


def event_context(event: Event) -> dict[str, Any]:
    """The `event` template variable for a stored event."""
    return {
        "id": event.id,
        "name": event.name,
        "attributes": dict(event.attributes),
        "timestamp": format_timestamp(event.created_at),
    }


def message_context(
    user: Mapping[str, Any],
    *,
    event: Event | Mapping[str, Any] | None = None,
    campaign: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the context JSON that `queue_message` stores.

    `user` is the user's attributes plus `id`; `params` are the extra
    keywords of a send_email step. Raises ValueError when a keyword uses a
    name that the template context already defines.
    """
    params = dict(params or {})
    clashes = sorted(RESERVED_NAMES & params.keys())
    if clashes:
        raise ValueError(
            f"send_email keyword {clashes[0]!r} clashes with a built-in template variable "
            f"({', '.join(sorted(RESERVED_NAMES))}); rename the keyword"
        )
    if isinstance(event, Event):
        event = event_context(event)
    return {
        "user": dict(user),
        "event": dict(event) if event is not None else None,
        "campaign": campaign,
        "params": params,
    }


def is_unsubscribed(user: Mapping[str, Any] | None) -> bool:
    """Return True if the user's attributes mark them as unsubscribed from campaign mail."""
    return bool(user) and user.get("unsubscribed") is True


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

    `context` is the dict that `message_context` builds. A campaign message
    for a user whose stored attributes have `"unsubscribed": true` is
    stored as `suppressed`, so it never reaches a provider; delivery checks
    the user's current attributes again before sending.
    """
    if kind not in (CAMPAIGN, TRANSACTIONAL):
        raise ValueError(f"message kind must be {CAMPAIGN!r} or {TRANSACTIONAL!r}, got {kind!r}")
    # INSERT IGNORE would cut a longer value to fit its VARCHAR(255) column
    # with only a warning, and two keys cut to the same text would collide.
    for field, value in (("message key", key), ("template name", template), ("campaign name", campaign or "")):
        if len(value) > 255:
            raise ValueError(f"{field} {value[:40]!r}... is {len(value)} characters long; the maximum is 255")
    last_error = None
    if kind == CAMPAIGN and status == "queued" and is_unsubscribed(context.get("user")):
        status = "suppressed"
        last_error = "not sent: the user is unsubscribed from campaign mail"
    await cur.execute(
        QUERIES.insert_message,
        (key, kind, user_id, template, campaign, run_id, event_id, dump_json(context), status, last_error, now, now),
    )
    inserted = cur.rowcount == 1
    if inserted and status != "queued":
        MESSAGES.labels(kind, status).inc()
        if status == "suppressed":
            log.info(
                "message suppressed",
                extra={"action": "suppress_message", "message_key": key, "user_id": user_id,
                       "campaign": campaign, "template": template, "reason": "unsubscribed"},
            )
    return QueuedMessage(key=key, inserted=inserted, status=status)

"""Users and their attributes in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from segflowd.db import dump_json, load_json
from segflowd.queries import QUERIES


async def upsert_user(cur: Any, user_id: str, attributes: dict[str, Any], now: datetime) -> bool:
    """Create the user or merge `attributes` into it (RFC 7396 merge patch); return True if created."""
    await cur.execute(QUERIES.upsert_user, (user_id, dump_json(attributes), now, now))
    return cur.rowcount == 1


async def update_user(cur: Any, user_id: str, attributes: dict[str, Any], now: datetime) -> bool:
    """Merge `attributes` into an existing user; return False if there is no such user."""
    await cur.execute(QUERIES.lock_user, (user_id,))
    if await cur.fetchone() is None:
        return False
    await cur.execute(QUERIES.update_user, (dump_json(attributes), now, user_id))
    return True


async def ensure_user(cur: Any, user_id: str, now: datetime) -> bool:
    """Create the user with no attributes if missing; return True if created."""
    await cur.execute(QUERIES.ensure_user, (user_id, now, now))
    return cur.rowcount == 1


async def get_user(cur: Any, user_id: str) -> dict[str, Any] | None:
    """The user's attributes plus `id`, or None."""
    await cur.execute(QUERIES.get_user, (user_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    return {**load_json(row["attributes"]), "id": row["id"]}

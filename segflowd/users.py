"""Users and their attributes in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from segflowd.db import dump_json, load_json
from segflowd.queries import QUERIES


async def upsert_user(cur: Any, user_id: str, attributes: dict[str, Any], now: datetime) -> bool:
    """Create the user or merge `attributes` into it (RFC 7396 merge patch); return True if created."""
    patch = dump_json(attributes)
    await cur.execute(QUERIES.upsert_user, (user_id, patch, now, now, patch))
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
    """Return the user's attributes plus `id`, or None if there is no such user."""
    await cur.execute(QUERIES.get_user, (user_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    return {**load_json(row["attributes"]), "id": row["id"]}


async def lock_users(cur: Any, user_ids: list[str], now: datetime) -> set[str]:
    """Lock the rows of `user_ids` in id order, creating missing users; return the ids created.

    Taking every lock up front and in one order keeps concurrent batches
    that share users from deadlocking on each other.
    NOTE: two transactions that create the same user at the same moment
    both report it as created; the row itself is created once.
    """
    ordered = sorted(set(user_ids))
    if not ordered:
        return set()
    placeholders = ", ".join(["%s"] * len(ordered))
    # The IN list is built from placeholders only; the ids are parameters.
    await cur.execute(f"SELECT id FROM users WHERE id IN ({placeholders}) ORDER BY id FOR UPDATE", ordered)
    existing = {row["id"] for row in await cur.fetchall()}
    missing = [user_id for user_id in ordered if user_id not in existing]
    if missing:
        rows = ", ".join(["(%s, '{}', %s, %s)"] * len(missing))
        args: list[Any] = []
        for user_id in missing:
            args += [user_id, now, now]
        await cur.execute(
            f"INSERT INTO users (id, attributes, created_at, updated_at) VALUES {rows} ON DUPLICATE KEY UPDATE id = id",
            args,
        )
    return set(missing)

"""`segflowd segment NAME`: who is in a segment, as of now or another time."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from segflowd.clock import Clock
from segflowd.config import Config
from segflowd.db import error_code
from segflowd.queries import QUERIES
from segflowd.segments.check import read_only_cursor, server_error
from segflowd.segments.compiler import compile_segment
from segflowd.segments.errors import SegmentSQLError
from segflowd.segments.params import compose


async def print_segment(
    config: Config, db: Any, name: str, *, at: datetime | None, limit: int, clock: Clock | None = None
) -> int:
    """Print how many users match a segment and up to `limit` of their ids; return the exit code.

    The segment's SQL is evaluated as of `at` (naive UTC) or now, in a
    read-only transaction. As of now, the stored membership is shown too
    when it differs. `clock` gives "now" (the daemon's clock, shifted by
    `clock.start` if the config sets it).
    """
    if name not in config.segments:
        defined = ", ".join(sorted(config.segments)) or "none"
        print(f"segflowd: segment {name!r} is not defined in {config.path}; defined segments: {defined}", file=sys.stderr)
        return 1
    if limit < 0:
        print(f"segflowd: --limit must be 0 or more, got {limit}", file=sys.stderr)
        return 1
    try:
        segment = compile_segment(config.segments[name])
    except SegmentSQLError as exc:
        print(f"segflowd: {exc}", file=sys.stderr)
        return 1

    as_of = at if at is not None else (clock or Clock()).now()
    count_statement = compose(QUERIES.count_segment, segment.query)
    list_statement = compose(QUERIES.list_segment, segment.query)
    try:
        async with read_only_cursor(db) as cur:
            await cur.execute(count_statement.sql, count_statement.args(as_of))
            count = (await cur.fetchone())["members"]
            ids: list[str] = []
            if limit:
                await cur.execute(list_statement.sql, list_statement.args(as_of, limit=limit))
                ids = [row["id"] for row in await cur.fetchall()]
            stored = None
            if at is None:
                await cur.execute(QUERIES.count_members, (name,))
                stored = (await cur.fetchone())["members"]
    except Exception as exc:
        if error_code(exc) is None or error_code(exc) >= 2000:
            raise
        print(f"segflowd: {server_error(segment, exc)}", file=sys.stderr)
        return 1

    when = as_of.strftime("%Y-%m-%d %H:%M:%S")
    print(f"segment {name}: {count} user{'s' if count != 1 else ''} as of {when} UTC")
    for user_id in ids:
        print(f"  {user_id}")
    if count > len(ids):
        print(f"  ... and {count - len(ids)} more")
    if stored is not None and stored != count:
        print(
            f"stored membership: {stored} user{'s' if stored != 1 else ''}; the daemon brings it up to date "
            "per user as data arrives and in full on the segment's refresh interval"
        )
    return 0

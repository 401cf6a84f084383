"""Full evaluation of one segment, in bounded batches of user ids.

Users are taken in id order, `batch_size` at a time. Each batch runs in its
own transaction: lock the batch's user rows (so ingest for those users
waits rather than racing), compute inside MySQL the difference between
the segment's result for that id range and the stored members in the same
range, store the enters and exits, and call the listeners. Python holds
only one batch's changed ids at a time. The ranges cover every possible
id (the last one is open-ended), so ids returned by the SQL that are not
in `users` and stored members of deleted users are handled too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Callable

from asyncmy.cursors import DictCursor

from segflowd.db import ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, error_code
from segflowd.queries import QUERIES
from segflowd.segments.compiler import CompiledSegment
from segflowd.segments.membership import ChangeListener, ConcurrentChange, apply_segment_changes
from segflowd.segments.params import Statement, compose

log = logging.getLogger(__name__)

_DEADLOCK_ATTEMPTS = 5


@dataclass(frozen=True)
class RefreshResult:
    """What one full evaluation changed."""

    segment: str
    entered: int
    left: int
    batches: int
    evaluated_at: datetime
    completed: bool = True


class RefreshStopped(Exception):
    """The engine is stopping; the full evaluation ended between two batches."""


@dataclass(frozen=True)
class BatchStatements:
    bounded: Statement
    open: Statement

    @classmethod
    def for_segment(cls, segment: CompiledSegment) -> "BatchStatements":
        return cls(
            bounded=compose(QUERIES.batch_changes, segment.batch),
            open=compose(QUERIES.batch_changes_open, segment.batch_open),
        )


def lock_name(database: str, segment: str) -> str:
    """The server-wide GET_LOCK name of a segment's full evaluation (at most 64 characters)."""
    digest = hashlib.sha256(f"{database}\0{segment}".encode("utf-8")).hexdigest()
    return f"segflowd.segment.{digest[:40]}"


@contextlib.asynccontextmanager
async def segment_lock(db: Any, segment: str, timeout_seconds: float) -> AsyncIterator[bool]:
    """Hold the segment's named lock on a connection of its own; yield whether it was acquired.

    GET_LOCK belongs to the connection, so it holds across the separate
    batch transactions and is freed by the server if this process dies.
    """
    name = lock_name(db.url.database, segment)
    async with db.connection() as conn:
        async with conn.cursor(DictCursor) as cur:
            await cur.execute(QUERIES.get_segment_lock, (name, timeout_seconds))
            row = await cur.fetchone()
            await conn.commit()
            acquired = bool(row and row["acquired"] == 1)
            try:
                yield acquired
            finally:
                if acquired:
                    try:
                        await cur.execute(QUERIES.release_segment_lock, (name,))
                        await cur.fetchall()
                        await conn.commit()
                    except Exception:  # noqa: BLE001 - closing the connection frees the lock too
                        conn.close()


async def evaluate_in_full(
    db: Any,
    segment: CompiledSegment,
    statements: BatchStatements,
    listeners: list[ChangeListener],
    clock_now: Callable[[], datetime],
    *,
    batch_size: int,
    now: datetime | None = None,
    stopping: asyncio.Event | None = None,
) -> RefreshResult:
    """Bring a segment's stored membership in line with its SQL, batch by batch.

    With `now`, every batch is evaluated as of that time; without it, each
    batch as of the clock when it starts, the same time a per-user
    evaluation at that moment would use.
    """
    started = time.monotonic()
    evaluated_at = now or clock_now()
    low = ""
    entered = left = batches = 0
    while True:
        if stopping is not None and stopping.is_set():
            raise RefreshStopped()
        as_of = now or clock_now()
        high, batch_entered, batch_left = await _run_batch(db, segment, statements, listeners, low, as_of, batch_size)
        entered += batch_entered
        left += batch_left
        batches += 1
        if high is None:
            break
        low = high
    log.info(
        "segment evaluated in full",
        extra={
            "action": "evaluate_segment",
            "segment": segment.name,
            "entered": entered,
            "left": left,
            "batches": batches,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return RefreshResult(segment.name, entered, left, batches, evaluated_at)


async def _run_batch(
    db: Any,
    segment: CompiledSegment,
    statements: BatchStatements,
    listeners: list[ChangeListener],
    low: str,
    as_of: datetime,
    batch_size: int,
) -> tuple[str | None, int, int]:
    """One batch in one transaction; returns its upper bound (None for the last) and counts."""
    row_by_row = False
    attempt = 0
    while True:
        attempt += 1
        try:
            async with db.transaction() as cur:
                await cur.execute(QUERIES.batch_upper_bound, (low, batch_size))
                row = await cur.fetchone()
                high = row["id"] if row else None
                if high is None:
                    await cur.execute(QUERIES.lock_user_batch_open, (low,))
                    statement = statements.open
                else:
                    await cur.execute(QUERIES.lock_user_batch, (low, high))
                    statement = statements.bounded
                await cur.fetchall()
                await cur.execute(statement.sql, statement.args(as_of, low=low, high=high, segment=segment.name))
                rows = await cur.fetchall()
                entering = [r["user_id"] for r in rows if r["change_kind"] == "enter"]
                leaving = [r["user_id"] for r in rows if r["change_kind"] == "exit"]
                entered, left = await apply_segment_changes(
                    cur, segment.name, entering, leaving, as_of, listeners, row_by_row=row_by_row
                )
            return high, len(entered), len(left)
        except ConcurrentChange:
            # Rolled back: another transaction changed some of these rows.
            row_by_row = True
        except Exception as exc:
            if error_code(exc) not in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT) or attempt >= _DEADLOCK_ATTEMPTS:
                raise
            log.warning(
                "segment batch retried after a lock conflict",
                extra={"action": "retry_segment_batch", "segment": segment.name, "attempt": attempt, "error": str(exc)},
            )

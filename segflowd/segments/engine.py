"""Stored segment membership, kept current as users, events and time change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from sqlglot import exp

from segflowd.config import Config
from segflowd.db import ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, error_code
from segflowd.model import MembershipChanges
from segflowd.queries import QUERIES
from segflowd.segments.compiler import CompiledSegment, compile_segments
from segflowd.segments.errors import InvalidSegmentsError
from segflowd.segments.membership import ChangeListener, apply_user_changes
from segflowd.segments.params import Statement, compose, join_statements
from segflowd.segments.refresh import (
    BatchStatements,
    RefreshResult,
    RefreshStopped,
    evaluate_in_full,
    segment_lock,
)

__all__ = ["ChangeListener", "RefreshResult", "SegmentEngine"]

log = logging.getLogger(__name__)

# Rows per batch of a full evaluation: each batch is one transaction that
# locks this many user rows.
DEFAULT_BATCH_SIZE = 1000
# How long start() waits for another process's full evaluation of the same
# segment before leaving it to that process.
START_LOCK_TIMEOUT_SECONDS = 600
# How long stop() lets a running batch finish before cancelling it.
STOP_GRACE_SECONDS = 30.0
# A failing segment is logged at most this often, not on every ingest.
ERROR_LOG_INTERVAL_SECONDS = 60.0

_UNION = "\nUNION ALL\n"


class SegmentEngine:
    """Evaluates segments per user and in full, and stores the membership."""

    def __init__(self, config: Config, db: Any, clock: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        compiled, errors = compile_segments(config.segments)
        if errors:
            raise InvalidSegmentsError(errors)
        self.config = config
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.listeners: list[ChangeListener] = []
        self.segments: dict[str, CompiledSegment] = compiled
        self._names = tuple(sorted(compiled))
        self._batches = {name: BatchStatements.for_segment(segment) for name, segment in compiled.items()}
        self._branches = {
            name: compose(QUERIES.user_match_branch, segment.per_user, segment_name=_literal(name))
            for name, segment in compiled.items()
        }
        self._members_branch = compose(QUERIES.user_members_branch)
        # Per-user statements by the tuple of segment names they evaluate.
        self._user_statements: dict[tuple[str, ...], Statement] = {}
        self._error_logged_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    # --- per user ------------------------------------------------------------

    def triggered_segments(self, event_name: str | None = None) -> tuple[str, ...]:
        """Names of the segments to evaluate after a user change (None) or an event of this name."""
        if event_name is None:
            return self._names
        return tuple(name for name in self._names if self.segments[name].triggered_by(event_name))

    async def evaluate_user(self, cur: Any, user_id: str, *, event_name: str | None = None) -> MembershipChanges:
        """Re-evaluate one user's segments inside the caller's transaction.

        With `event_name`, only the segments that read events of that name
        (or events with no name filter) are evaluated; without it, every
        segment is. Stores the membership, writes enter/exit records, calls
        each listener, and returns the changes.

        The caller holds the user's row lock (`lock_user`, or the upsert of
        the user), so that two requests for one user evaluate one after the
        other and neither misses the other's data. One round trip reads the
        stored memberships and every evaluated segment's result.
        """
        names = self.triggered_segments(event_name)
        if not names:
            return MembershipChanges()
        now = self.clock.now()
        statement = self._user_statement(names)
        failed: set[str] = set()
        try:
            await cur.execute(statement.sql, statement.args(now, user_id=user_id))
            rows = await cur.fetchall()
        except Exception as exc:
            if not _is_sql_error(exc):
                raise
            # One segment's SQL failed on the server (the statement alone
            # is undone, not the transaction): evaluate the others one by one.
            rows, failed = await self._evaluate_one_by_one(cur, user_id, names, now)

        matched = {row["segment"] for row in rows if row["matched"] == 1}
        stored = {row["segment"] for row in rows if row["matched"] == 0}
        # A segment whose SQL failed keeps its stored membership for this user.
        evaluated = set(names) - failed
        entered = sorted(matched - stored)
        left = sorted((stored & evaluated) - matched)
        if not entered and not left:
            return MembershipChanges()
        return await apply_user_changes(cur, user_id, entered, left, now, self.listeners)

    def _user_statement(self, names: tuple[str, ...]) -> Statement:
        statement = self._user_statements.get(names)
        if statement is None:
            branches = [self._branches[name] for name in names] + [self._members_branch]
            statement = join_statements(branches, _UNION)
            self._user_statements[names] = statement
        return statement

    async def _evaluate_one_by_one(
        self, cur: Any, user_id: str, names: tuple[str, ...], now: datetime
    ) -> tuple[list[dict], set[str]]:
        """Run each segment's branch on its own; return the rows and the segments that failed."""
        rows: list[dict] = []
        failed: set[str] = set()
        for name in names:
            branch = self._branches[name]
            try:
                await cur.execute(branch.sql, branch.args(now, user_id=user_id))
                rows += list(await cur.fetchall())
            except Exception as exc:
                if not _is_sql_error(exc):
                    raise
                failed.add(name)
                self._log_segment_error(name, user_id, exc)
        members = self._members_branch
        await cur.execute(members.sql, members.args(now, user_id=user_id))
        rows += list(await cur.fetchall())
        return rows, failed

    def _log_segment_error(self, name: str, user_id: str, exc: BaseException) -> None:
        last = self._error_logged_at.get(name)
        if last is not None and time.monotonic() - last < ERROR_LOG_INTERVAL_SECONDS:
            return
        self._error_logged_at[name] = time.monotonic()
        log.error(
            "segment SQL failed on the server; the user's membership of it is unchanged; "
            "run `segflowd check` to see the error",
            extra={"action": "evaluate_user", "segment": name, "user_id": user_id, "error": str(exc)},
        )

    async def segments_of(self, cur: Any, user_id: str) -> list[str]:
        """Names of the configured segments the user is a member of now."""
        await cur.execute(QUERIES.select_user_segments, (user_id,))
        return [row["segment"] for row in await cur.fetchall() if row["segment"] in self.segments]

    # --- full evaluation --------------------------------------------------------

    async def refresh_segment(self, name: str, now: datetime | None = None) -> RefreshResult | None:
        """Evaluate one segment in full, as of `now` (naive UTC) or of the clock.

        Waits for another process's evaluation of the same segment to end
        first; returns None if it did not end within the wait.
        """
        segment = self._segment(name)
        async with segment_lock(self.db, name, START_LOCK_TIMEOUT_SECONDS) as acquired:
            if not acquired:
                return None
            return await self._evaluate_and_record(segment, now)

    async def _evaluate_and_record(self, segment: CompiledSegment, now: datetime | None) -> RefreshResult:
        result = await evaluate_in_full(
            self.db,
            segment,
            self._batches[segment.name],
            self.listeners,
            self.clock.now,
            batch_size=self.batch_size,
            now=now,
            stopping=self._stopping,
        )
        async with self.db.transaction() as cur:
            await cur.execute(QUERIES.upsert_definition, (segment.name, segment.sql_hash, result.evaluated_at))
        return result

    def _segment(self, name: str) -> CompiledSegment:
        try:
            return self.segments[name]
        except KeyError:
            defined = ", ".join(self._names) or "none"
            raise KeyError(f"segment {name!r} is not defined; defined segments: {defined}") from None

    async def sync_definitions(self) -> list[RefreshResult]:
        """Evaluate in full every segment whose SQL is new or changed; forget removed ones."""
        stored = {row["name"]: row for row in await self.db.fetch_all(QUERIES.select_definitions)}
        results = []
        for name in self._names:
            segment = self.segments[name]
            row = stored.get(name)
            if row is not None and row["sql_hash"] == segment.sql_hash:
                continue
            reason = "new" if row is None else "changed"
            async with segment_lock(self.db, name, START_LOCK_TIMEOUT_SECONDS) as acquired:
                if not acquired:
                    log.warning(
                        "another process is still evaluating the segment; leaving it to that process",
                        extra={"action": "sync_segment", "segment": name},
                    )
                    continue
                # Another process may have finished it while this one waited.
                current = await self.db.fetch_one(QUERIES.select_definition, (name,))
                if current is not None and current["sql_hash"] == segment.sql_hash:
                    continue
                log.info(
                    "evaluating segment in full because its SQL is " + reason,
                    extra={"action": "sync_segment", "segment": name, "reason": reason},
                )
                results.append(await self._evaluate_and_record(segment, None))

        removed = set(stored) | {row["segment"] for row in await self.db.fetch_all(QUERIES.select_member_segments)}
        for name in sorted(removed - set(self._names)):
            await self._forget_segment(name)
        return results

    async def _forget_segment(self, name: str) -> None:
        """Delete the memberships of a segment that is no longer configured, in batches."""
        deleted = 0
        while True:
            async with self.db.transaction() as cur:
                await cur.execute(QUERIES.delete_segment_members, (name, self.batch_size))
                count = cur.rowcount
            deleted += count
            if count < self.batch_size:
                break
        async with self.db.transaction() as cur:
            await cur.execute(QUERIES.delete_definition, (name,))
        log.info(
            "segment removed from the config; its memberships were deleted",
            extra={"action": "forget_segment", "segment": name, "members": deleted},
        )

    # --- the refresher ------------------------------------------------------------

    async def start(self) -> None:
        """Evaluate new or changed segments in full, then start refreshing the refreshed ones.

        Refreshed segments are the time-dependent ones and those that read
        other users' rows; each is evaluated in full on its `refresh` interval.
        """
        self._stopping = asyncio.Event()
        await self.sync_definitions()
        refreshed = [name for name in self._names if self.segments[name].refreshed]
        if refreshed:
            self._task = asyncio.create_task(self._refresh_loop(refreshed), name="segment-refresher")
        log.info(
            "segment refresher started",
            extra={"action": "start_segments", "segments": len(self._names), "refreshed": ",".join(refreshed)},
        )

    async def stop(self) -> None:
        """Stop the refresher: let a running batch finish, then end."""
        if self._stopping is not None:
            self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=STOP_GRACE_SECONDS)
        except asyncio.TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("segment refresher stopped", extra={"action": "stop_segments"})

    def _tick_seconds(self, names: list[str]) -> float:
        shortest = min(self.segments[name].refresh for name in names)
        return min(max(shortest.total_seconds() / 4, 0.05), 10.0)

    async def _refresh_loop(self, names: list[str]) -> None:
        assert self._stopping is not None
        tick = self._tick_seconds(names)
        while not self._stopping.is_set():
            for name in names:
                if self._stopping.is_set():
                    break
                try:
                    await self.refresh_if_due(name)
                except RefreshStopped:
                    break
                except Exception:
                    log.exception(
                        "segment refresh failed; retrying at the next interval",
                        extra={"action": "refresh_segment", "segment": name},
                    )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=tick)

    async def refresh_if_due(self, name: str) -> RefreshResult | None:
        """Evaluate a refreshed segment in full if its interval has passed since the last evaluation.

        Another process that holds the segment's lock is evaluating it
        already, so this one skips it rather than wait.
        """
        segment = self._segment(name)
        if not self._is_due(segment, await self.db.fetch_one(QUERIES.select_definition, (name,))):
            return None
        async with segment_lock(self.db, name, 0) as acquired:
            if not acquired:
                return None
            if not self._is_due(segment, await self.db.fetch_one(QUERIES.select_definition, (name,))):
                return None
            return await self._evaluate_and_record(segment, None)

    def _is_due(self, segment: CompiledSegment, row: dict | None) -> bool:
        if row is None or row["evaluated_at"] is None:
            return True
        return self.clock.now() - row["evaluated_at"] >= segment.refresh


def _literal(text: str) -> str:
    """A quoted SQL string literal, with `%` doubled for the driver."""
    return exp.Literal.string(text).sql(dialect="mysql").replace("%", "%%")


def _is_sql_error(exc: BaseException) -> bool:
    """A server error about the statement itself, after which the transaction goes on."""
    code = error_code(exc)
    if code is None or code in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT):
        return False
    # Codes from 2000 are client-side: a lost or broken connection.
    return code < 2000

"""`segflowd check` for segments."""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from typing import Any, AsyncIterator

from asyncmy.cursors import DictCursor

from segflowd.clock import Clock
from segflowd.config import Config
from segflowd.db import error_code
from segflowd.queries import QUERIES
from segflowd.segments.compiler import CompiledSegment, compile_segments
from segflowd.segments.errors import SegmentSQLError
from segflowd.segments.params import compose


async def check_segments(config: Config, db: Any | None) -> tuple[list[str], list[str]]:
    """Validate every segment's SQL; return (errors, notes).

    With `db`, each segment that passes validation also runs read-only with
    LIMIT 0 so that a misspelt column is reported before deploy. Notes name
    the segments whose per-user evaluation cannot push the user filter into
    the SQL, and those refreshed in full on their interval.
    """
    compiled, failures = compile_segments(config.segments)
    errors = [str(failure) for failure in failures]
    notes: list[str] = []
    for name in sorted(compiled):
        notes += segment_notes(compiled[name])
    if db is not None and compiled:
        errors += await server_errors(db, list(compiled.values()))
    return errors, notes


def segment_notes(segment: CompiledSegment) -> list[str]:
    """Return the notes `segflowd check` prints about a valid segment's evaluation."""
    notes = []
    where = f"segments.{segment.name}"
    every = format_interval(segment.refresh)
    if segment.analysis_problem is not None:
        notes.append(
            f"{where}: segflowd could not analyze this SQL ({segment.analysis_problem}); it runs as written, "
            f"each per-user evaluation filters the whole result, and it is evaluated in full every {every}"
        )
        return notes
    if not segment.pushdown.complete:
        reasons = "; ".join(segment.pushdown.reasons)
        notes.append(
            f"{where}: falls back from pushdown: per-user evaluation filters the finished result, "
            f"which reads more than the user's rows, because {reasons}"
        )
    if segment.time_dependent:
        found = ", ".join(str(item) for item in segment.time_functions)
        notes.append(f"{where}: time-dependent ({found}): evaluated in full every {every}")
    if segment.other_users:
        found = ", ".join(str(item) for item in segment.other_users)
        notes.append(
            f"{where}: reads rows of other users ({found}), so another user's data can change a user's "
            f"membership: evaluated in full every {every}, besides per user"
        )
    return notes


async def server_errors(db: Any, segments: list[CompiledSegment]) -> list[str]:
    """Run each segment's statements with LIMIT 0 in a read-only transaction; return the errors."""
    errors: list[str] = []
    now = Clock().now()
    async with read_only_cursor(db) as cur:
        for segment in segments:
            for statement in (segment.query, segment.per_user, segment.batch, segment.batch_open):
                probe = compose(QUERIES.segment_limit_zero, statement)
                args = probe.args(now, user_id="", low="", high="", segment=segment.name)
                try:
                    await cur.execute(probe.sql, args)
                    await cur.fetchall()
                except Exception as exc:
                    if error_code(exc) is None or error_code(exc) >= 2000:
                        raise
                    errors.append(str(server_error(segment, exc)))
                    break
    return errors


def server_error(segment: CompiledSegment, exc: BaseException) -> SegmentSQLError:
    """Convert a server error to a SegmentSQLError, placed at the name it quotes when the SQL has it."""
    code = error_code(exc)
    message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    sql = segment.source_sql
    line, column = 1, 1
    for quoted in re.findall(r"'([^']+)'", message) + re.findall(r"\b(?:FUNCTION|function) [\w.]*?(\w+) ", message):
        name = quoted.split(".")[-1]
        found = re.search(re.escape(name), sql, re.IGNORECASE) if name else None
        if found:
            line = sql.count("\n", 0, found.start()) + 1
            column = found.start() - (sql.rfind("\n", 0, found.start()) + 1) + 1
            break
    reason = f"the database rejected the SQL (error {code}: {message}); fix the SQL and run segflowd check again"
    return SegmentSQLError(segment.name, reason, line, column, segment.file)


@contextlib.asynccontextmanager
async def read_only_cursor(db: Any) -> AsyncIterator[Any]:
    """Open a dict cursor in a read-only transaction, rolled back at the end."""
    async with db.connection() as conn:
        async with conn.cursor(DictCursor) as cur:
            await cur.execute(QUERIES.start_read_only)
            try:
                yield cur
            finally:
                await conn.rollback()


def format_interval(interval: timedelta) -> str:
    """Format a refresh interval as the config writes it: 90s, 5m, 2h, 1d."""
    seconds = interval.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

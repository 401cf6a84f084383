"""Writing membership changes: segment_members rows, enter/exit records, listeners.

A change is recorded only by the transaction whose INSERT or DELETE of the
segment_members row took effect, so two transactions that reach the same
conclusion (a per-user evaluation and a full refresh, or two daemons) write
one enter or exit record between them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Awaitable, Callable

from prometheus_client import Counter

from segflowd.metrics import REGISTRY
from segflowd.model import MembershipChanges
from segflowd.queries import QUERIES

# Called inside the transaction that changed a user's membership, so that
# enrollment commits or rolls back with the change itself.
ChangeListener = Callable[[Any, str, MembershipChanges, datetime], Awaitable[None]]

MEMBERSHIP_CHANGES = Counter(
    "segflowd_segment_changes",
    "Users entering and leaving segments.",
    ["change_kind"],
    registry=REGISTRY,
)


class ConcurrentChange(Exception):
    """Another transaction changed some of the same memberships first; redo row by row."""


async def apply_user_changes(
    cur: Any,
    user_id: str,
    entered: list[str],
    left: list[str],
    now: datetime,
    listeners: list[ChangeListener],
) -> MembershipChanges:
    """Store one user's enters and exits, record them and call the listeners."""
    changes = MembershipChanges()
    for segment in entered:
        await cur.execute(QUERIES.insert_member, (segment, user_id, now))
        if cur.rowcount == 1:
            await cur.execute(QUERIES.insert_change, (segment, user_id, "enter", now))
            changes.entered.append(segment)
    for segment in left:
        await cur.execute(QUERIES.delete_member, (segment, user_id))
        if cur.rowcount == 1:
            await cur.execute(QUERIES.insert_change, (segment, user_id, "exit", now))
            changes.left.append(segment)
    await notify(cur, user_id, changes, now, listeners)
    return changes


async def apply_segment_changes(
    cur: Any,
    segment: str,
    entering: list[str],
    leaving: list[str],
    now: datetime,
    listeners: list[ChangeListener],
    *,
    row_by_row: bool,
) -> tuple[list[str], list[str]]:
    """Store one batch of a segment's enters and exits; return the users that did change.

    In bulk mode a row count that differs from the expected one means
    another transaction got there first: ConcurrentChange is raised so that
    the caller rolls back and redoes the batch with `row_by_row`.
    """
    if row_by_row:
        entered, left = [], []
        for user_id in entering:
            await cur.execute(QUERIES.insert_member, (segment, user_id, now))
            if cur.rowcount == 1:
                entered.append(user_id)
        for user_id in leaving:
            await cur.execute(QUERIES.delete_member, (segment, user_id))
            if cur.rowcount == 1:
                left.append(user_id)
    else:
        entered, left = list(entering), list(leaving)
        if entering:
            await cur.executemany(QUERIES.insert_member, [(segment, user_id, now) for user_id in entering])
            if cur.rowcount != len(entering):
                raise ConcurrentChange()
        if leaving:
            await cur.execute(QUERIES.delete_members, (segment, tuple(leaving)))
            if cur.rowcount != len(leaving):
                raise ConcurrentChange()

    records = [(segment, user_id, "enter", now) for user_id in entered]
    records += [(segment, user_id, "exit", now) for user_id in left]
    if records:
        await cur.executemany(QUERIES.insert_change, records)
    for user_id in entered:
        await notify(cur, user_id, MembershipChanges(entered=[segment]), now, listeners)
    for user_id in left:
        await notify(cur, user_id, MembershipChanges(left=[segment]), now, listeners)
    return entered, left


async def notify(
    cur: Any, user_id: str, changes: MembershipChanges, now: datetime, listeners: list[ChangeListener]
) -> None:
    """Count the changes and call every listener, if anything changed."""
    if not changes:
        return
    if changes.entered:
        MEMBERSHIP_CHANGES.labels("enter").inc(len(changes.entered))
    if changes.left:
        MEMBERSHIP_CHANGES.labels("exit").inc(len(changes.left))
    for listener in listeners:
        await listener(cur, user_id, changes, now)

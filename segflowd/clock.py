"""The daemon's one clock.

Every part that needs the current time calls a Clock, so that tests (and
backtests) move time forward instead of sleeping. Times are naive UTC
datetimes, the form the database stores.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class Clock:
    """The real clock: UTC wall time."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc).replace(tzinfo=None)


class FakeClock(Clock):
    """A clock whose time changes only when a test sets or advances it."""

    def __init__(self, start: datetime) -> None:
        self._now = start.replace(tzinfo=None) if start.tzinfo is None else to_naive_utc(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = to_naive_utc(when) if when.tzinfo else when

    def advance(self, delta: timedelta | None = None, **units: float) -> datetime:
        self._now += delta if delta is not None else timedelta(**units)
        return self._now


class ShiftedClock(Clock):
    """A clock that starts at a chosen instant and then runs at wall-clock speed.

    For backtests and demos on historical data: with `clock.start` set to
    1998-07-01, segments that compare against NOW() see 1998.
    NOTE: each process starts its own shifted clock, so processes that
    share a database agree on the time only if they start together.
    """

    def __init__(self, start: datetime) -> None:
        self._start = to_naive_utc(start)
        self._wall_start = Clock.now(self)

    def now(self) -> datetime:
        return self._start + (Clock.now(self) - self._wall_start)


def clock_for(start: datetime | None) -> Clock:
    """Return the daemon's clock: the wall clock, or one shifted to start at `start`."""
    return ShiftedClock(start) if start is not None else Clock()


def to_naive_utc(when: datetime) -> datetime:
    """Convert an aware datetime to naive UTC; a naive one is taken as UTC."""
    if when.tzinfo is None:
        return when
    return when.astimezone(timezone.utc).replace(tzinfo=None)

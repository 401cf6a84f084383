"""Flow steps, built by the runtime `rt`, and the read-only user of a flow.

A flow is a generator function `flow(user, rt)`. Each `yield` hands the
scheduler one Step built by a method of `rt`; the value sent back into the
generator is that step's result. A Step's `kind` and `signature` are what the
journal records and what a replay compares, so both are plain JSON.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from segflowd.messages.queue import RESERVED_NAMES

SEND_EMAIL = "send_email"
WAIT = "wait"
WAIT_FOR_EVENT = "wait_for_event"
UPDATE_USER = "update_user"
KINDS = (SEND_EMAIL, WAIT, WAIT_FOR_EVENT, UPDATE_USER)

_WAIT_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}

# Longer waits are almost certainly a unit mistake, and a due time past year
# 9999 cannot be stored at all.
MAX_WAIT = timedelta(days=36_500)


@dataclass(frozen=True)
class Step:
    """One step a flow yields: its kind and its JSON signature."""

    kind: str
    signature: dict[str, Any]

    def describe(self) -> str:
        """Render the step as flow code would write it, for log lines and run errors."""
        return describe_step(self.kind, self.signature)


def describe_step(kind: str, signature: dict[str, Any]) -> str:
    """Render a journal entry as the call that produced it: `send_email('welcome')`."""
    if kind == SEND_EMAIL:
        params = "".join(f", {key}={value!r}" for key, value in signature.get("params", {}).items())
        return f"send_email({signature.get('template')!r}{params})"
    if kind == WAIT:
        return f"wait(seconds={signature.get('seconds')!r})"
    if kind == WAIT_FOR_EVENT:
        return f"wait_for_event({signature.get('event')!r}, timeout={signature.get('timeout_seconds')!r}s)"
    if kind == UPDATE_USER:
        attributes = ", ".join(f"{key}={value!r}" for key, value in signature.get("attributes", {}).items())
        return f"update_user({attributes})"
    return f"{kind}({signature!r})"


def normalize_json(value: Any, what: str) -> Any:
    """Return `value` as it reads back from JSON; raise TypeError if it is not JSON data.

    Tuples become lists and every key a string, so that a signature computed
    now compares equal to the one the journal stored.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must be JSON data (str, int, float, bool, None, lists and dicts of them): {exc}"
        ) from None
    return json.loads(text)


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be zero or more seconds, got {value!r}")
    if seconds > MAX_WAIT.total_seconds():
        raise ValueError(f"{what} must be at most {MAX_WAIT.days} days, got {value!r}")
    return seconds


class Runtime:
    """The `rt` argument of a flow: builds the steps the flow yields.

    Each method checks its arguments at once, so a wrong call raises inside
    the flow at the line that made it. A step built but never yielded is an
    error too (see `unyielded`), because `rt.send_email(...)` without
    `yield` would otherwise do nothing without a word.
    """

    def __init__(self, campaign: str, run_id: int, user_id: str) -> None:
        self.campaign = campaign
        self.run_id = run_id
        self.user_id = user_id
        self._built: list[Step] = []

    def send_email(self, template: str, **params: Any) -> Step:
        """Queue the template for this user; keywords are extra template context."""
        if not isinstance(template, str) or not template:
            raise TypeError(f"send_email() expects a template name as its first argument, got {template!r}")
        clashes = sorted(RESERVED_NAMES & params.keys())
        if clashes:
            raise ValueError(
                f"send_email({template!r}) keyword {clashes[0]!r} is a variable the template context "
                f"defines itself ({', '.join(sorted(RESERVED_NAMES))}); rename the keyword"
            )
        params = normalize_json(params, f"send_email({template!r}) keywords")
        return self._build(SEND_EMAIL, {"template": template, "params": params})

    def wait(self, delta: timedelta | None = None, /, **units: float) -> Step:
        """Pause the run: `wait(days=1)`, `wait(hours=2, minutes=30)` or `wait(timedelta(...))`."""
        unknown = sorted(set(units) - set(_WAIT_UNITS))
        if unknown:
            raise TypeError(
                f"wait() got unknown keyword {unknown[0]!r}; use seconds=, minutes=, hours=, days= or weeks="
            )
        if delta is not None and units:
            raise TypeError("wait() takes either a timedelta or unit keywords such as days=1, not both")
        if delta is None and not units:
            raise TypeError("wait() needs a duration, such as wait(days=1) or wait(timedelta(hours=2))")
        if delta is not None:
            if not isinstance(delta, timedelta):
                raise TypeError(f"wait() takes a timedelta as its argument, got {delta!r}; or use days=1")
            seconds = _seconds(delta, "wait()")
        else:
            seconds = 0.0
            for unit, amount in units.items():
                seconds += _seconds(amount, f"wait({unit}=...)") * _WAIT_UNITS[unit]
            if seconds > MAX_WAIT.total_seconds():
                raise ValueError(f"wait() must be at most {MAX_WAIT.days} days, got {seconds} seconds")
        return self._build(WAIT, {"seconds": seconds})

    def wait_for_event(self, name: str, timeout: timedelta | float) -> Step:
        """Pause until this user's next `name` event or the timeout.

        The flow receives the event's attributes, or None at the timeout.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"wait_for_event() expects an event name as its first argument, got {name!r}")
        seconds = _seconds(timeout, "wait_for_event() timeout")
        return self._build(WAIT_FOR_EVENT, {"event": name, "timeout_seconds": seconds})

    def update_user(self, **attributes: Any) -> Step:
        """Merge attributes into the user, then re-evaluate the user's segments."""
        if not attributes:
            raise TypeError("update_user() needs at least one attribute, such as update_user(onboarded=True)")
        if "id" in attributes:
            raise ValueError("update_user() cannot change the user's id")
        attributes = normalize_json(attributes, "update_user() attributes")
        return self._build(UPDATE_USER, {"attributes": attributes})

    def _build(self, kind: str, signature: dict[str, Any]) -> Step:
        step = Step(kind, signature)
        self._built.append(step)
        return step

    def take_yielded(self, step: Any) -> None:
        """Mark `step` as yielded, so that it no longer counts as built but unused."""
        for i, built in enumerate(self._built):
            if built is step:
                del self._built[i]
                return

    def unyielded(self) -> list[Step]:
        """Steps the flow built but did not yield."""
        return list(self._built)


class UserView(Mapping[str, Any]):
    """The read-only `user` argument of a flow: attributes plus `id`.

    The scheduler replaces the data between steps, so that during a replay
    the flow reads the user as they were when each step first ran.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = copy.deepcopy(data)

    def replace(self, data: dict[str, Any]) -> None:
        """Show the flow another version of the user (a journal snapshot or the current row)."""
        self._data = copy.deepcopy(data)

    def snapshot(self) -> dict[str, Any]:
        """Return a copy of the data the flow reads now, for the journal."""
        return copy.deepcopy(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError("user is read-only in a flow; change attributes with `yield rt.update_user(...)`")

    def __delitem__(self, key: str) -> None:
        raise TypeError("user is read-only in a flow; remove an attribute with `yield rt.update_user(name=None)`")

    def __repr__(self) -> str:
        return f"UserView({self._data!r})"

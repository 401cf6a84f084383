"""Drive a flow generator: start it, feed it results, and catch what its code does wrong.

Every error raised by flow code, or by a step the flow yields badly, comes
out of `FlowDriver.advance` as FlowFailure, so the caller fails that run
alone and keeps going.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

from segflowd.campaigns.steps import Runtime, Step, UserView, describe_step


class FlowFailure(Exception):
    """Flow code raised, or yielded something that is not a step; the run fails."""

    def __init__(
        self,
        message: str,
        exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exc_info = exc_info

    def details(self) -> str:
        """The message plus the flow's traceback, for the run's error column."""
        if self.exc_info is None:
            return self.message
        return self.message + "\n" + "".join(traceback.format_exception(*self.exc_info))


@dataclass(frozen=True)
class JournalEntry:
    """One executed step as the journal stores it."""

    index: int
    kind: str
    signature: dict[str, Any]
    result: Any
    user_snapshot: dict[str, Any]

    def describe(self) -> str:
        return describe_step(self.kind, self.signature)


class FlowDriver:
    """One run's flow generator with its `user` view and `rt`."""

    def __init__(self, flow: Callable[[Any, Any], Any], runtime: Runtime, user: dict[str, Any]) -> None:
        self.flow = flow
        self.rt = runtime
        self.user = UserView(user)
        self._generator: Any = None

    def advance(self, result: Any) -> Step | None:
        """Resume the flow with the previous step's result; return its next step, or None if it returned."""
        try:
            if self._generator is None:
                self._generator = self.flow(self.user, self.rt)
                yielded = next(self._generator)
            else:
                yielded = self._generator.send(result)
        except StopIteration:
            self._check_all_yielded()
            return None
        except Exception as exc:  # noqa: BLE001 - flow code may raise anything; the run fails alone
            raise FlowFailure(f"the flow raised {type(exc).__name__}: {exc}", sys.exc_info()) from exc

        if not isinstance(yielded, Step):
            raise FlowFailure(
                f"the flow yielded {yielded!r}; a flow yields only rt.send_email(...), rt.wait(...), "
                "rt.wait_for_event(...) or rt.update_user(...)"
            )
        self.rt.take_yielded(yielded)
        self._check_all_yielded()
        return yielded

    def _check_all_yielded(self) -> None:
        forgotten = self.rt.unyielded()
        if forgotten:
            raise FlowFailure(
                f"the flow called rt.{forgotten[0].describe()} without yielding it; "
                "write `yield rt.<step>(...)` so that the step runs"
            )

    def close(self) -> None:
        """Close the generator, so its `finally` blocks run now rather than at garbage collection."""
        if self._generator is None:
            return
        try:
            self._generator.close()
        except Exception:  # noqa: BLE001 - a flow that misbehaves on close changes nothing stored
            pass


def same_step(step: Step, entry: JournalEntry) -> bool:
    """True if a replayed step is the one the journal recorded at its index."""
    return step.kind == entry.kind and step.signature == entry.signature

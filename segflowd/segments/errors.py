"""Errors raised for segment SQL that segflowd does not accept."""

from __future__ import annotations

from pathlib import Path


class SegmentSQLError(Exception):
    """One segment's SQL rejected before it reaches the database.

    `line` and `column` are 1-based and point into the segment's own SQL
    text (the `sql:` value or the `.sql` file), not into the config file.
    """

    def __init__(self, segment: str, reason: str, line: int, column: int, file: Path | None = None) -> None:
        self.segment = segment
        self.reason = reason
        self.line = line
        self.column = column
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"segments.{self.segment}"
        if self.file is not None:
            where += f" ({self.file})"
        return f"{where}: line {self.line}, column {self.column}: {self.reason}"


class InvalidSegmentsError(ValueError):
    """Segment SQL in the config that cannot run; `errors` holds one SegmentSQLError per segment."""

    def __init__(self, errors: list[SegmentSQLError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {error}" for error in errors)
        count = f"{len(errors)} segment{'s' if len(errors) != 1 else ''}"
        super().__init__(f"invalid SQL in {count}; run `segflowd check` for details:\n{lines}")

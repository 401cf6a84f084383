"""Named SQL blocks loaded from the package's `sql/*.sql` files.

Each block starts with a name line and a description, then the statement:

    -- insert_event --
    -- Store one event for a user.
    INSERT INTO events ...

Every block's name is unique across the files and matches the method that
runs it. Loading fails at start on a malformed or duplicate block, so a
broken query stops the daemon before it serves anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME_LINE = re.compile(r"^-- ([a-z_][a-z0-9_]*) --\s*$")


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: str
    source: str


class QueryFileError(Exception):
    pass


def parse_blocks(text: str, source: str) -> dict[str, Query]:
    """Split one `.sql` file into its named blocks."""
    blocks: dict[str, Query] = {}
    name: str | None = None
    description: list[str] = []
    body: list[str] = []

    def close() -> None:
        if name is None:
            return
        sql = "\n".join(body).strip().rstrip(";").strip()
        if not sql:
            raise QueryFileError(f"{source}: query {name!r} has no SQL after its name line")
        if not description:
            raise QueryFileError(f"{source}: query {name!r} needs a '-- description' line")
        blocks[name] = Query(name, " ".join(description), sql, source)

    for line in text.splitlines():
        match = _NAME_LINE.match(line)
        if match:
            close()
            name = match.group(1)
            if name in blocks:
                raise QueryFileError(f"{source}: query {name!r} is defined twice")
            description, body = [], []
        elif name is None:
            continue  # file header comment
        elif line.startswith("--") and not body:
            description.append(line[2:].strip())
        else:
            body.append(line)
    close()
    return blocks


def load_queries() -> dict[str, Query]:
    """Load every named block shipped in `segflowd/sql/`."""
    queries: dict[str, Query] = {}
    for entry in sorted(resources.files("segflowd").joinpath("sql").iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, query in parse_blocks(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in queries:
                raise QueryFileError(
                    f"{entry.name}: query {name!r} is already defined in {queries[name].source}"
                )
            queries[name] = query
    return queries


class Queries:
    """Attribute access to the loaded SQL: `queries.insert_event`."""

    def __init__(self) -> None:
        self._queries = load_queries()

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name].sql
        except KeyError:
            raise AttributeError(f"no SQL block named {name!r} in segflowd/sql/") from None

    def names(self) -> list[str]:
        return sorted(self._queries)


QUERIES = Queries()

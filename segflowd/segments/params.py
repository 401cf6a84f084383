"""Query parameters in generated segment SQL: the clock, the user id and batch bounds.

Time functions (NOW(), CURDATE(), UNIX_TIMESTAMP(), ...) are replaced by
parameters bound to segflowd's clock, so a segment can be evaluated as of
any time. Parameters are placeholder nodes in the tree; `render` turns the
tree into asyncmy's `%s` style, doubling every `%` of the user's SQL
(`LIKE 'a%'`, `DATE_FORMAT(d, '%Y')`) so that the driver keeps it.
"""

from __future__ import annotations

import calendar
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlglot import exp

from segflowd.segments.portable import PortableMySQL
from segflowd.segments.validate import SourceText, node_offset

# Kinds of parameter.
NOW = "now"  # DATETIME(fsp)
DATE = "date"
TIME = "time"  # TIME(fsp)
UNIX = "unix"  # integer seconds since the epoch
USER = "user"  # the user id of a per-user evaluation
LOW = "low"  # inclusive lower bound of a batch of user ids
HIGH = "high"  # exclusive upper bound of a batch of user ids
SEGMENT = "segment"  # a segment name
LIMIT = "limit"  # a row count


@dataclass(frozen=True)
class Param:
    kind: str
    fsp: int = 0


@dataclass
class Params:
    """The parameters of one compiled segment; each is a placeholder named with a nonce."""

    nonce: str = field(default_factory=lambda: secrets.token_hex(6))
    params: list[Param] = field(default_factory=list)

    def placeholder(self, param: Param) -> exp.Placeholder:
        self.params.append(param)
        return exp.Placeholder(this=f"sfp{self.nonce}_{len(self.params) - 1}")


@dataclass(frozen=True)
class Statement:
    """SQL text in `%s` style and what each `%s` stands for, in order."""

    sql: str
    params: tuple[Param, ...]

    def args(
        self,
        now: datetime,
        *,
        user_id: str | None = None,
        low: str | None = None,
        high: str | None = None,
        segment: str | None = None,
        limit: int | None = None,
    ) -> list:
        """The driver arguments for this statement, evaluated as of `now`."""
        given = {USER: user_id, LOW: low, HIGH: high, SEGMENT: segment, LIMIT: limit}
        values: list = []
        for param in self.params:
            if param.kind in given:
                if given[param.kind] is None:
                    raise ValueError(f"the statement needs a value for {param.kind}")
                values.append(given[param.kind])
            else:
                values.append(time_value(param, now))
        return values

    @property
    def time_dependent(self) -> bool:
        return any(p.kind in (NOW, DATE, TIME, UNIX) for p in self.params)


def time_value(param: Param, now: datetime) -> str | int:
    """The value a time function returns at `now` (naive UTC), as MySQL formats it."""
    if param.kind == UNIX:
        return calendar.timegm(now.timetuple())
    if param.kind == DATE:
        return now.date().isoformat()
    clock = now.strftime("%H:%M:%S")
    if param.fsp:
        # MySQL truncates the current time to the requested precision.
        clock += "." + f"{now.microsecond:06d}"[: param.fsp]
    if param.kind == TIME:
        return clock
    return now.strftime("%Y-%m-%d ") + clock


def _fsp(node: exp.Expression, source: SourceText) -> int:
    argument = node.this if not isinstance(node, exp.Anonymous) else (node.expressions[0] if node.expressions else None)
    if argument is None:
        return 0
    if isinstance(argument, exp.Literal) and not argument.is_string and argument.name.isdigit() and int(argument.name) <= 6:
        return int(argument.name)
    raise source.error(
        f"the precision of {node.sql(dialect='mysql')} must be a number from 0 to 6", node_offset(node)
    )


def bind_time(tree: exp.Expression, params: Params, source: SourceText) -> list[tuple[str, int | None]]:
    """Replace time functions by clock parameters; return (function, offset) of each one replaced."""
    found: list[tuple[str, int | None]] = []
    for node in list(tree.walk()):
        replacement: exp.Expression | None = None
        name = ""
        if isinstance(node, (exp.CurrentTimestamp, exp.UtcTimestamp, exp.Localtimestamp, exp.Localtime)):
            name = type(node).__name__
            replacement = _cast(params.placeholder(Param(NOW, _fsp(node, source))), "DATETIME", _fsp(node, source))
        elif isinstance(node, (exp.CurrentDate, exp.UtcDate)):
            name = type(node).__name__
            replacement = _cast(params.placeholder(Param(DATE)), "DATE", None)
        elif isinstance(node, (exp.CurrentTime, exp.UtcTime)):
            name = type(node).__name__
            fsp = _fsp(node, source)
            replacement = _cast(params.placeholder(Param(TIME, fsp)), "TIME", fsp)
        elif isinstance(node, exp.Anonymous):
            name = str(node.name).upper()
            if name in ("NOW", "SYSDATE"):
                fsp = _fsp(node, source)
                replacement = _cast(params.placeholder(Param(NOW, fsp)), "DATETIME", fsp)
            elif name == "CURDATE":
                replacement = _cast(params.placeholder(Param(DATE)), "DATE", None)
            elif name == "CURTIME":
                fsp = _fsp(node, source)
                replacement = _cast(params.placeholder(Param(TIME, fsp)), "TIME", fsp)
            elif name == "UNIX_TIMESTAMP" and not node.expressions:
                replacement = params.placeholder(Param(UNIX))
        if replacement is not None:
            found.append((_display_name(name), node_offset(node)))
            node.replace(replacement)
    return found


_DISPLAY = {
    "CurrentTimestamp": "CURRENT_TIMESTAMP",
    "UtcTimestamp": "UTC_TIMESTAMP",
    "Localtimestamp": "LOCALTIMESTAMP",
    "Localtime": "LOCALTIME",
    "CurrentDate": "CURRENT_DATE",
    "UtcDate": "UTC_DATE",
    "CurrentTime": "CURRENT_TIME",
    "UtcTime": "UTC_TIME",
}


def _display_name(name: str) -> str:
    return _DISPLAY.get(name, name) + "()"


def _cast(value: exp.Expression, type_name: str, fsp: int | None) -> exp.Expression:
    text = type_name if not fsp else f"{type_name}({fsp})"
    return exp.Cast(this=value, to=exp.DataType.build(text, dialect="mysql"))


def render(tree: exp.Expression, params: Params) -> Statement:
    """Generate portable SQL text with `%s` parameters from a tree holding placeholders."""
    sql = tree.sql(dialect=PortableMySQL, comments=False)
    return render_text(sql, params)


def render_text(sql: str, params: Params) -> Statement:
    """Escape `%` for the driver and turn this compile's placeholders into `%s`."""
    sql = sql.replace("%", "%%")
    order: list[Param] = []

    def replace(match: re.Match[str]) -> str:
        order.append(params.params[int(match.group(1))])
        return "%s"

    sql = re.sub(rf":sfp{params.nonce}_(\d+)", replace, sql)
    return Statement(sql, tuple(order))


_TEMPLATE_FIELD = re.compile(r"\{([a-z_]+)\}")


def compose(template: str, segment: Statement | None = None, **literals: str) -> Statement:
    """Fill a SQL template from segments.sql.

    `{segment_sql}` takes the segment's statement and its parameters;
    `{user_id}`, `{low}`, `{high}`, `{segment}` and `{limit}` become `%s`
    parameters of those kinds; any other `{field}` takes the SQL text given
    in `literals`. One pass, so text put in is never scanned again.
    """
    kinds = {"user_id": USER, "low": LOW, "high": HIGH, "segment": SEGMENT, "limit": LIMIT}
    params: list[Param] = []

    def fill(match: re.Match[str]) -> str:
        field_name = match.group(1)
        if field_name == "segment_sql":
            if segment is None:
                raise ValueError("the template needs a segment statement")
            params.extend(segment.params)
            return segment.sql
        if field_name in kinds:
            params.append(Param(kinds[field_name]))
            return "%s"
        if field_name in literals:
            return literals[field_name]
        raise ValueError(f"no value for template field {{{field_name}}}")

    sql = _TEMPLATE_FIELD.sub(fill, template)
    return Statement(sql, tuple(params))


def join_statements(statements: list[Statement], separator: str) -> Statement:
    """Concatenate statements (as UNION ALL branches, say), keeping parameter order."""
    params: list[Param] = []
    for statement in statements:
        params.extend(statement.params)
    return Statement(separator.join(s.sql for s in statements), tuple(params))

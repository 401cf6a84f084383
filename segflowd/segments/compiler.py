"""Compile a segment's SQL once: validate, make portable, bind time, push filters."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlglot import exp

from segflowd.config import SegmentConfig
from segflowd.segments import analysis
from segflowd.segments.errors import SegmentSQLError
from segflowd.segments.params import HIGH, LOW, USER, Param, Params, Statement, bind_time, render
from segflowd.segments.portable import make_portable
from segflowd.segments.pushdown import PushOutcome, push_filter
from segflowd.segments.validate import node_offset, validate_sql

# Part of every segment's hash: a change to how SQL is compiled makes the
# next start evaluate every segment in full again.
COMPILER_VERSION = "segflowd-segments-1"


@dataclass(frozen=True)
class Located:
    """Something found in the segment's SQL and where (1-based)."""

    label: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.label} at line {self.line}, column {self.column}"


@dataclass(frozen=True)
class CompiledSegment:
    """Everything segflowd runs for one segment, compiled from its SQL."""

    name: str
    file: Path | None
    refresh: timedelta
    # The SQL as the user wrote it, for locating server errors.
    source_sql: str
    sql_hash: str
    # The segment's SQL as it runs, with time parameters.
    query: Statement
    # The same with `id = <user>` pushed in, for per-user evaluation.
    per_user: Statement
    # The same with `id >= <low> AND id < <high>` (or only `>= <low>`)
    # pushed in, for the batches of a full evaluation.
    batch: Statement
    batch_open: Statement
    pushdown: PushOutcome
    # Event names that can change membership: empty if the SQL reads no
    # events, None if any event can.
    event_names: frozenset[str] | None
    time_functions: tuple[Located, ...]
    other_users: tuple[Located, ...]
    # Why the SQL could not be analyzed (it then runs as written), or None.
    analysis_problem: str | None = None

    @property
    def reads_events(self) -> bool:
        return self.event_names is None or bool(self.event_names)

    @property
    def time_dependent(self) -> bool:
        return bool(self.time_functions)

    @property
    def refreshed(self) -> bool:
        """Whether the segment needs a full refresh on its interval."""
        return self.time_dependent or bool(self.other_users) or self.analysis_problem is not None

    def triggered_by(self, event_name: str) -> bool:
        return self.event_names is None or event_name in self.event_names


def compile_segment(config: SegmentConfig) -> CompiledSegment:
    """Compile one configured segment; raise SegmentSQLError if its SQL is not accepted."""
    try:
        return _compile(config)
    except SegmentSQLError:
        raise
    except Exception as exc:  # noqa: BLE001 - a construct sqlglot or this compiler cannot handle
        reason = (
            f"segflowd could not compile this SQL ({type(exc).__name__}: {exc}); "
            "rewrite the construct it names, or report the SQL as a bug"
        )
        raise SegmentSQLError(config.name, reason, 1, 1, config.file) from exc


def _compile(config: SegmentConfig) -> CompiledSegment:
    validated = validate_sql(config.name, config.sql, config.file)
    source, tree = validated.source, validated.tree
    make_portable(tree, source)

    params = Params()
    found = bind_time(tree, params, source)
    time_functions = tuple(Located(name, *source.position(offset or 0)) for name, offset in found)
    query = render(tree, params)

    if not validated.qualified:
        reason = f"segflowd could not resolve the columns ({validated.qualify_problem})"
        outcome = PushOutcome(False, [reason])
        return CompiledSegment(
            name=config.name,
            file=config.file,
            refresh=config.refresh,
            source_sql=config.sql,
            sql_hash=_hash(query),
            query=query,
            per_user=query,
            batch=query,
            batch_open=query,
            pushdown=outcome,
            event_names=None if any(t.name == "events" for t in tree.find_all(exp.Table)) else frozenset(),
            time_functions=time_functions,
            other_users=(),
            analysis_problem=validated.qualify_problem,
        )

    user_tree = tree.copy()
    user_param = Param(USER)

    def equals_user(column: exp.Column) -> exp.Expression:
        return exp.EQ(this=column, expression=params.placeholder(user_param))

    outcome = push_filter(user_tree, equals_user)
    per_user = render(user_tree, params)

    def in_range(column: exp.Column) -> exp.Expression:
        low = exp.GTE(this=column.copy(), expression=params.placeholder(Param(LOW)))
        high = exp.LT(this=column, expression=params.placeholder(Param(HIGH)))
        return exp.and_(low, high, copy=False)

    def from_low(column: exp.Column) -> exp.Expression:
        return exp.GTE(this=column, expression=params.placeholder(Param(LOW)))

    batch_tree = tree.copy()
    push_filter(batch_tree, in_range)
    open_tree = tree.copy()
    push_filter(open_tree, from_low)

    def user_filter_column(term: exp.Expression) -> exp.Column | None:
        if isinstance(term, exp.EQ) and isinstance(term.this, exp.Column) and isinstance(term.expression, exp.Placeholder):
            index = int(str(term.expression.name).rsplit("_", 1)[-1])
            if params.params[index].kind == USER:
                return term.this
        return None

    untied = analysis.untied_reads(user_tree, user_filter_column)
    other_users = tuple(
        Located(f"{read.table.name} AS {read.table.alias_or_name}", *source.position(node_offset(read.table) or 0))
        for read in untied
    )
    return CompiledSegment(
        name=config.name,
        file=config.file,
        refresh=config.refresh,
        source_sql=config.sql,
        sql_hash=_hash(query),
        query=query,
        per_user=per_user,
        batch=render(batch_tree, params),
        batch_open=render(open_tree, params),
        pushdown=outcome,
        event_names=analysis.event_names(tree),
        time_functions=time_functions,
        other_users=other_users,
    )


def compile_segments(segments: dict[str, SegmentConfig]) -> tuple[dict[str, CompiledSegment], list[SegmentSQLError]]:
    """Compile every segment; return the compiled ones and an error for each rejected one."""
    compiled: dict[str, CompiledSegment] = {}
    errors: list[SegmentSQLError] = []
    for name in sorted(segments):
        try:
            compiled[name] = compile_segment(segments[name])
        except SegmentSQLError as exc:
            errors.append(exc)
    return compiled, errors


def _hash(query: Statement) -> str:
    text = COMPILER_VERSION + "\n" + query.sql + "\n" + repr(query.params)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

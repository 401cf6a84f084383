"""Regenerate segment SQL in a form that MySQL 8 and MariaDB 10.6+ both run alike.

Users write MySQL. Where MariaDB lacks the syntax or silently returns a
different result, the tree is rewritten to a form that gives MySQL's
result on both servers:

- `a->'$.p'` and `a->>'$.p'` (syntax error on MariaDB) become
  `JSON_EXTRACT(a, '$.p')` and `JSON_UNQUOTE(JSON_EXTRACT(a, '$.p'))`.
- A JSON value compared with an SQL value: MySQL converts the SQL value to
  JSON and compares by JSON type first, then by value (strings as
  utf8mb4_bin, numbers numerically, false < true), ordering values of
  different types by the type precedence NULL < numbers < STRING < OBJECT
  < ARRAY < BOOLEAN. MariaDB compares the JSON text, quotes included, and
  `JSON_EXTRACT(...) IN ('pro', 'max')` matches nobody there. Such
  comparisons (=, <>, <, <=, >, >=, <=>, IN, BETWEEN) become explicit
  JSON_TYPE / JSON_UNQUOTE forms with MySQL's three-valued result.
- A JSON value used as a condition (`WHERE JSON_EXTRACT(a, '$.vip')`) is
  true for JSON true and for non-zero numbers, as on MySQL.
- `v MEMBER OF (j)` (MySQL 8.0.17+, not MariaDB) becomes JSON_CONTAINS.
- `REGEXP_LIKE(s, p[, flags])` (not MariaDB) becomes `s REGEXP p`, with
  the flags as an inline `(?i)`/`(?-i)`/`(?m)`/`(?s)` prefix, which both
  ICU (MySQL) and PCRE2 (MariaDB) read.
- `ANY_VALUE(x)` (not MariaDB) becomes `MIN(x)`: one of the values, and the
  same one for per-user and full evaluation.
- `JSON_VALUE(j, p RETURNING t)` (not MariaDB) becomes
  `CAST(JSON_VALUE(j, p) AS t)`; `CAST('...' AS JSON)` (not MariaDB) is
  accepted as a literal operand of a JSON comparison or JSON function.

NOTE: these forms follow MySQL 8.0's documented JSON comparison rules; the
test suite runs them on MariaDB only. MySQL's manual lists IN() and BETWEEN
as not supported for JSON values; the rewritten forms avoid relying on them.
"""

from __future__ import annotations

import json
from typing import Callable

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL

from segflowd.segments.validate import SourceText, node_offset

_NUMBER_TYPES = ("INTEGER", "UNSIGNED INTEGER", "DOUBLE", "DECIMAL")
# MySQL's order of JSON types that parsed JSON text can have, lowest first
# (the numeric types share one rank).
_TYPE_RANK = {"NULL": 0, **{name: 1 for name in _NUMBER_TYPES}, "STRING": 2, "OBJECT": 3, "ARRAY": 4, "BOOLEAN": 5}
_KIND_TYPE = {"STRING": "STRING", "NUMBER": "INTEGER", "BOOLEAN": "BOOLEAN"}

_MIRROR = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}
_RANK_TEST: dict[type, Callable[[int, int], bool]] = {
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a > b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a < b,
}
# Varchar columns of the readable tables, by (table, column).
_TEXT_COLUMNS = {("users", "id"), ("events", "user_id"), ("events", "name")}

_REGEXP_FLAGS = {"i": "(?i)", "c": "(?-i)", "m": "(?m)", "n": "(?s)"}


class PortableMySQL(MySQL):
    """MySQL output with the forms MariaDB also runs."""

    class Generator(MySQL.Generator):
        TRANSFORMS = {
            **MySQL.Generator.TRANSFORMS,
            exp.RegexpLike: lambda self, e: self.binary(e, "REGEXP"),
        }


class PortabilityError(Exception):
    """A construct with no form that both servers run alike; carries the node."""

    def __init__(self, reason: str, node: exp.Expression) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


def make_portable(tree: exp.Query, source: SourceText) -> exp.Query:
    """Rewrite `tree` in place for both servers; raise SegmentSQLError where impossible."""
    try:
        _rewrite_arrows(tree)
        _rewrite_json_literals_in_functions(tree)
        for node in list(tree.walk()):
            if node.root() is not tree:
                continue  # inside a node replaced earlier in this walk
            _rewrite_node(node)
        _check_leftover_json_casts(tree)
    except PortabilityError as exc:
        raise source.error(exc.reason, node_offset(exc.node)) from None
    return tree


def _rewrite_arrows(tree: exp.Expression) -> None:
    for node in list(tree.find_all(exp.JSONExtractScalar)):
        extract = exp.JSONExtract(this=node.this, expression=node.expression)
        if node.expressions:
            extract.set("expressions", node.expressions)
        node.replace(exp.Anonymous(this="JSON_UNQUOTE", expressions=[extract]))


def _rewrite_json_literals_in_functions(tree: exp.Expression) -> None:
    """`JSON_CONTAINS(j, CAST('"a"' AS JSON))`: the function takes the JSON text itself."""
    for cast in list(tree.find_all(exp.Cast)):
        if not _is_json_cast_of_literal(cast):
            continue
        parent = cast.parent
        name = parent.sql_name() if isinstance(parent, exp.Func) and not isinstance(parent, exp.Anonymous) else ""
        if isinstance(parent, exp.Anonymous):
            name = str(parent.name)
        if name.upper().startswith("JSON_"):
            cast.replace(cast.this.copy())


def _rewrite_node(node: exp.Expression) -> None:
    if isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ)):
        _rewrite_comparison(node)
    elif isinstance(node, exp.In):
        _rewrite_in(node)
    elif isinstance(node, exp.Between):
        _rewrite_between(node)
    elif isinstance(node, exp.JSONArrayContains):
        _rewrite_member_of(node)
    elif isinstance(node, exp.RegexpLike):
        _rewrite_regexp_flags(node)
    elif isinstance(node, exp.AnyValue):
        node.replace(exp.Min(this=node.this))
    elif isinstance(node, exp.JSONValue) and isinstance(node.args.get("returning"), exp.DataType):
        returning = node.args["returning"]
        bare = node.copy()
        bare.set("returning", None)
        node.replace(exp.Cast(this=bare, to=returning))
    elif _is_json_value(node) and _in_condition_position(node):
        node.replace(_json_truth(node))


# --- JSON values ------------------------------------------------------------------


def _is_json_value(node: exp.Expression | None) -> bool:
    """A single JSON value: JSON_EXTRACT with one path (the `->` operator)."""
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.JSONExtract) and not node.expressions


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _is_json_cast(node: exp.Expression) -> bool:
    target = node.args.get("to") if isinstance(node, exp.Cast) else None
    return isinstance(target, exp.DataType) and target.is_type(exp.DataType.Type.JSON)


def _is_json_cast_of_literal(node: exp.Expression) -> bool:
    return _is_json_cast(node) and isinstance(node.this, exp.Literal) and node.this.is_string


def _sql_operand(node: exp.Expression) -> tuple[str, exp.Expression] | None:
    """Classify an SQL operand compared with a JSON value: (kind, SQL expression).

    kind is STRING, NUMBER, BOOLEAN or NULL (a JSON null literal); None means
    the operand's type is unknown here, and the comparison is left as written.
    """
    node = _unparen(node)
    if isinstance(node, exp.Literal):
        return ("STRING" if node.is_string else "NUMBER"), node
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return "NUMBER", node
    if isinstance(node, exp.Boolean):
        return "BOOLEAN", node
    if _is_json_cast_of_literal(node):
        try:
            value = json.loads(node.this.name)
        except ValueError:
            raise PortabilityError(f"invalid JSON text {node.this.name!r} in CAST(... AS JSON)", node) from None
        if isinstance(value, bool):
            return "BOOLEAN", exp.Boolean(this=value)
        if isinstance(value, (int, float)):
            return "NUMBER", exp.Literal.number(value)
        if isinstance(value, str):
            return "STRING", exp.Literal.string(value)
        if value is None:
            return "NULL", exp.Null()
        raise PortabilityError(
            "comparing with a JSON array or object is not portable (MariaDB compares JSON text); "
            "compare single values, or use JSON_CONTAINS",
            node,
        )
    if _is_text(node):
        return "STRING", node
    return None


def _is_text(node: exp.Expression) -> bool:
    """Whether an expression is known to be a string on both servers."""
    if isinstance(node, exp.Anonymous) and str(node.name).upper() == "JSON_UNQUOTE":
        return True
    if isinstance(node, (exp.Concat, exp.Lower, exp.Upper, exp.Trim, exp.Substring)):
        return True
    if isinstance(node, exp.Column):
        table = _column_table(node)
        return table is not None and (table, node.name) in _TEXT_COLUMNS
    return False


def _column_table(column: exp.Column) -> str | None:
    """The base table (users or events) a qualified column reads, if known."""
    alias = column.table
    scope: exp.Expression | None = column.parent
    while scope is not None:
        if isinstance(scope, exp.Select):
            for source in _select_sources(scope):
                if isinstance(source, exp.Table) and source.alias_or_name == alias:
                    return source.name if source.name in ("users", "events") else None
                if isinstance(source, exp.Subquery) and source.alias == alias:
                    return None
        scope = scope.parent
    return None


def _select_sources(select: exp.Select) -> list[exp.Expression]:
    sources = []
    from_ = select.args.get("from_")
    if from_ is not None:
        sources.append(from_.this)
    for join in select.args.get("joins") or []:
        sources.append(join.this)
    return sources


def _json_type(j: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this="JSON_TYPE", expressions=[j.copy()])


def _unquote(j: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this="JSON_UNQUOTE", expressions=[j.copy()])


def _same_type(j: exp.Expression, kind: str) -> exp.Expression:
    if kind == "NUMBER":
        return exp.In(this=_json_type(j), expressions=[exp.Literal.string(t) for t in _NUMBER_TYPES])
    if kind == "NULL":
        return exp.EQ(this=_json_type(j), expression=exp.Literal.string("NULL"))
    return exp.EQ(this=_json_type(j), expression=exp.Literal.string(_KIND_TYPE[kind]))


def _json_as(j: exp.Expression, kind: str) -> exp.Expression:
    """The JSON value as an SQL value of `kind`, valid where its JSON type is that kind."""
    if kind == "STRING":
        return _unquote(j)
    if kind == "NUMBER":
        # NOTE: compared as DOUBLE, so integers beyond 2^53 lose precision.
        return exp.Paren(this=exp.Add(this=_unquote(j), expression=exp.Literal.number(0)))
    return exp.Paren(this=exp.EQ(this=_unquote(j), expression=exp.Literal.string("true")))


def _compare_json(j: exp.Expression, op: type, kind: str, value: exp.Expression) -> exp.Expression:
    """MySQL's `j <op> value` for a JSON value j and an SQL value of `kind`."""
    if kind == "NULL":
        if op not in (exp.EQ, exp.NEQ, exp.NullSafeEQ):
            raise PortabilityError("only = and <> can compare a JSON value with a JSON null", value)
        equal: exp.Expression = _same_type(j, "NULL")
    else:
        equal = exp.and_(_same_type(j, kind), op_node(exp.EQ, _json_as(j, kind), value.copy()), copy=False)
    if op is exp.EQ:
        return exp.Paren(this=equal)
    if op is exp.NEQ:
        return exp.Not(this=exp.Paren(this=equal))
    if op is exp.NullSafeEQ:
        return exp.Coalesce(this=equal, expressions=[exp.false()])

    # Ordering: same type compares values; other types compare by rank.
    own_rank = _TYPE_RANK[_KIND_TYPE[kind]]
    winners = [name for name, rank in _TYPE_RANK.items() if _RANK_TEST[op](rank, own_rank)]
    if winners:
        other: exp.Expression = exp.In(this=_json_type(j), expressions=[exp.Literal.string(t) for t in winners])
    else:
        other = exp.false()
    return exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=j.copy(), expression=exp.Null()), true=exp.Null()),
            exp.If(this=_same_type(j, kind), true=op_node(op, _json_as(j, kind), value.copy())),
        ],
        default=other,
    )


def op_node(op: type, left: exp.Expression, right: exp.Expression) -> exp.Expression:
    return op(this=left, expression=right)


def _rewrite_comparison(node: exp.Expression) -> None:
    left, right = node.this, node.expression
    op = type(node)
    if _is_json_value(left) and not _is_json_value(right):
        j, other = _unparen(left), right
    elif _is_json_value(right) and not _is_json_value(left):
        j, other = _unparen(right), left
        op = _MIRROR.get(op, op)
    else:
        return
    operand = _sql_operand(other)
    if operand is None:
        return
    kind, value = operand
    node.replace(_compare_json(j, op, kind, value))


def _rewrite_in(node: exp.In) -> None:
    if not _is_json_value(node.this):
        return
    j = _unparen(node.this)
    query = node.args.get("query")
    if query is not None:
        # `j IN (SELECT text_column ...)`: compare the unquoted string.
        inner = query.this if isinstance(query, exp.Subquery) else query
        if isinstance(inner, exp.Select) and len(inner.expressions) == 1 and _is_text(inner.expressions[0].unalias()):
            node.replace(exp.and_(_same_type(j, "STRING"), exp.In(this=_unquote(j), query=query.copy()), copy=False))
        return
    groups: dict[str, list[exp.Expression]] = {}
    for item in node.expressions:
        operand = _sql_operand(item)
        if operand is None or operand[0] == "NULL":
            return  # unknown element type: leave as written
        groups.setdefault(operand[0], []).append(operand[1].copy())
    terms = [
        exp.Paren(this=exp.and_(_same_type(j, kind), exp.In(this=_json_as(j, kind), expressions=values), copy=False))
        for kind, values in groups.items()
    ]
    node.replace(exp.Paren(this=exp.or_(*terms, copy=False)))


def _rewrite_between(node: exp.Between) -> None:
    if not _is_json_value(node.this):
        return
    low, high = _sql_operand(node.args["low"]), _sql_operand(node.args["high"])
    if low is None or high is None or "NULL" in (low[0], high[0]):
        return
    j = _unparen(node.this)
    node.replace(
        exp.Paren(
            this=exp.and_(_compare_json(j, exp.GTE, *low), _compare_json(j, exp.LTE, *high), copy=False)
        )
    )


def _in_condition_position(node: exp.Expression) -> bool:
    parent, key = node.parent, node.arg_key
    if isinstance(parent, (exp.Where, exp.Having, exp.And, exp.Or, exp.Xor, exp.Not)):
        return True
    if isinstance(parent, exp.Join) and key == "on":
        return True
    return isinstance(parent, exp.If) and key == "this"


def _json_truth(node: exp.Expression) -> exp.Expression:
    """MySQL's truth value of a JSON value: JSON true, or a non-zero number."""
    j = _unparen(node)
    return exp.Paren(
        this=exp.Case(
            ifs=[exp.If(this=_same_type(j, "BOOLEAN"), true=_json_as(j, "BOOLEAN"))],
            default=exp.NEQ(this=_json_as(j, "NUMBER"), expression=exp.Literal.number(0)),
        )
    )


def _rewrite_member_of(node: exp.JSONArrayContains) -> None:
    value, array = _unparen(node.this), node.expression
    if _is_json_value(value):
        candidate: exp.Expression = value.copy()
    else:
        operand = _sql_operand(value)
        if operand is None or operand[0] == "NULL":
            raise PortabilityError(
                "MEMBER OF needs a literal or text value on its left to run on MariaDB; "
                "write JSON_CONTAINS(array, JSON_QUOTE(value)) instead",
                node,
            )
        kind, sql_value = operand
        if kind == "STRING" and isinstance(sql_value, exp.Literal):
            candidate = exp.Literal.string(json.dumps(sql_value.name))
        elif kind == "STRING":
            candidate = exp.Anonymous(this="JSON_QUOTE", expressions=[sql_value.copy()])
        elif kind == "BOOLEAN":
            candidate = exp.Literal.string("true" if sql_value.this else "false")
        else:
            candidate = exp.Literal.string(sql_value.sql(dialect="mysql"))
    node.replace(exp.Anonymous(this="JSON_CONTAINS", expressions=[array.copy(), candidate]))


def _rewrite_regexp_flags(node: exp.RegexpLike) -> None:
    flag = node.args.get("flag")
    if flag is None:
        return
    if not (isinstance(flag, exp.Literal) and flag.is_string):
        raise PortabilityError("REGEXP_LIKE match types must be a string literal such as 'i' or 'c'", flag)
    prefix = ""
    for char in flag.name:
        if char not in _REGEXP_FLAGS:
            raise PortabilityError(
                f"REGEXP_LIKE match type {char!r} has no portable form; use 'c', 'i', 'm' or 'n'", flag
            )
        prefix += _REGEXP_FLAGS[char]
    pattern = node.expression
    if isinstance(pattern, exp.Literal) and pattern.is_string:
        new_pattern: exp.Expression = exp.Literal.string(prefix + pattern.name)
    else:
        new_pattern = exp.Concat(expressions=[exp.Literal.string(prefix), pattern.copy()])
    node.set("expression", new_pattern)
    node.set("flag", None)


def _check_leftover_json_casts(tree: exp.Expression) -> None:
    for cast in tree.find_all(exp.Cast):
        if _is_json_cast(cast):
            raise PortabilityError(
                "CAST(... AS JSON) does not exist on MariaDB; compare JSON values with plain literals "
                "('pro', 5, TRUE), or pass JSON text to JSON functions",
                cast,
            )

"""Helpers over qualified segment trees: sources of a SELECT, CTEs, conjuncts."""

from __future__ import annotations

from sqlglot import exp


def unwrap(query: exp.Expression) -> exp.Expression:
    """The query inside parentheses."""
    while isinstance(query, exp.Subquery) and not query.alias:
        query = query.this
    return query


def sources(select: exp.Select) -> list[exp.Expression]:
    """The FROM and JOIN sources of a SELECT, in order."""
    found = []
    from_ = select.args.get("from_")
    if from_ is not None:
        found.append(from_.this)
    for join in select.args.get("joins") or []:
        found.append(join.this)
    return found


def source_alias(source: exp.Expression) -> str:
    if isinstance(source, exp.Table):
        return source.alias_or_name
    return source.alias


def find_source(select: exp.Select, alias: str) -> exp.Expression | None:
    for source in sources(select):
        if source_alias(source) == alias:
            return source
    return None


def visible_ctes(node: exp.Expression) -> dict[str, exp.CTE]:
    """CTEs visible from `node`, the nearest definition of each name first."""
    found: dict[str, exp.CTE] = {}
    current: exp.Expression | None = node
    while current is not None:
        with_ = current.args.get("with_") if isinstance(current, exp.Expression) else None
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                found.setdefault(cte.alias, cte)
        current = current.parent
    return found


def cte_of(table: exp.Table) -> exp.CTE | None:
    """The CTE a table reference names, if it names one."""
    if not isinstance(table.this, exp.Identifier) or table.args.get("db"):
        return None
    return visible_ctes(table).get(table.name)


def is_base_table(source: exp.Expression) -> bool:
    return (
        isinstance(source, exp.Table)
        and isinstance(source.this, exp.Identifier)
        and source.name in ("users", "events")
        and cte_of(source) is None
    )


def conjuncts(condition: exp.Expression | None) -> list[exp.Expression]:
    """The top-level AND terms of a condition, parentheses removed."""
    if condition is None:
        return []
    if isinstance(condition, (exp.Where, exp.Having)):
        condition = condition.this
    while isinstance(condition, exp.Paren):
        condition = condition.this
    if isinstance(condition, exp.And):
        return conjuncts(condition.this) + conjuncts(condition.expression)
    return [condition]


def enclosing_select(node: exp.Expression) -> exp.Select | None:
    current = node.parent
    while current is not None and not isinstance(current, exp.Select):
        current = current.parent
    return current


def owned_by(node: exp.Expression, select: exp.Select) -> bool:
    """Whether `node` belongs to `select` itself rather than to a nested query."""
    return enclosing_select(node) is select


def output_position(query: exp.Expression, name: str) -> int | None:
    """Position of the output column `name` of a query (its first SELECT for a UNION)."""
    first = unwrap(query)
    while isinstance(first, exp.SetOperation):
        first = unwrap(first.this)
    if not isinstance(first, exp.Select):
        return None
    for i, projection in enumerate(first.expressions):
        if projection.alias_or_name.lower() == name.lower():
            return i
    return None


def cte_output_position(cte: exp.CTE, name: str) -> int | None:
    columns = cte.args["alias"].args.get("columns") or []
    for i, column in enumerate(columns):
        if column.name.lower() == name.lower():
            return i
    if columns:
        return None
    return output_position(cte.this, name)


def same_column(a: exp.Expression, b: exp.Expression) -> bool:
    return isinstance(a, exp.Column) and isinstance(b, exp.Column) and a.table == b.table and a.name == b.name


def join_conditions(select: exp.Select) -> list[tuple[exp.Join, list[exp.Expression]]]:
    return [(join, conjuncts(join.args.get("on"))) for join in select.args.get("joins") or []]


def is_inner(join: exp.Join) -> bool:
    side = (join.side or "").upper()
    kind = (join.kind or "").upper()
    return not side and kind in ("", "INNER", "CROSS", "STRAIGHT_JOIN")


def equalities(select: exp.Select) -> list[tuple[exp.Column, exp.Column, str | None]]:
    """Column = column terms that hold for every row of the SELECT's result.

    Each is (a, b, only_into): terms of WHERE and of inner joins' ON hold in
    both directions; a term of a LEFT JOIN's ON only tells about the joined
    source (`only_into` is its alias), because unmatched rows of the left
    side survive with that source's columns NULL.
    """
    found: list[tuple[exp.Column, exp.Column, str | None]] = []
    for term in conjuncts(select.args.get("where")):
        if isinstance(term, exp.EQ) and isinstance(term.this, exp.Column) and isinstance(term.expression, exp.Column):
            found.append((term.this, term.expression, None))
    for join, terms in join_conditions(select):
        side = (join.side or "").upper()
        if is_inner(join):
            only_into = None
        elif side == "LEFT":
            only_into = source_alias(join.this)
        else:
            continue
        for term in terms:
            if isinstance(term, exp.EQ) and isinstance(term.this, exp.Column) and isinstance(term.expression, exp.Column):
                found.append((term.this, term.expression, only_into))
    return found

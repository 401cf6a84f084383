"""What a segment reads, found from its parse tree.

- Event triggers: which event names can change the segment. Each reference
  to `events` is constrained by `name = 'x'` or `name IN (...)` terms of its
  own SELECT's WHERE and of its JOIN's ON (AND-ed terms intersect, OR-ed
  terms unite); a reference with no such constraint reads every event, so
  every event name triggers the segment.
- Rows of other users: after the per-user filter is pushed, every read of
  `users` or `events` should be tied to that user, through the pushed
  filter, a join or correlation on the user id, or an `IN (subquery)` on
  it. A read that is not (a ranking over all users, a comparison with a
  global average, a referral by another user) means the user's membership
  can change when another user's data changes, so such a segment is also
  refreshed in full on its interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from segflowd.segments import scopes
from segflowd.segments.validate import USER_KEY

# None means "any name".
Names = frozenset[str] | None


def event_names(tree: exp.Expression) -> Names:
    """The event names that can change the segment; empty if it reads no events, None for all."""
    names: set[str] = set()
    for table in tree.find_all(exp.Table):
        if not scopes.is_base_table(table) or table.name != "events":
            continue
        constraint = _reference_names(table)
        if constraint is None:
            return None
        names |= constraint
    return frozenset(names)


def _reference_names(table: exp.Table) -> set[str] | None:
    select = scopes.enclosing_select(table)
    if select is None:
        return None
    alias = table.alias_or_name
    constraints = []
    where = _names_in(select.args.get("where"), alias)
    if where is not None:
        constraints.append(where)
    join = table.parent
    if isinstance(join, exp.Join):
        on = _names_in(join.args.get("on"), alias)
        if on is not None:
            constraints.append(on)
    if not constraints:
        return None
    result = constraints[0]
    for other in constraints[1:]:
        result &= other
    return result


def _names_in(condition: exp.Expression | None, alias: str) -> set[str] | None:
    """Names `alias.name` must have for `condition` to hold, or None if unconstrained."""
    if condition is None:
        return None
    if isinstance(condition, (exp.Where, exp.Having, exp.Paren)):
        return _names_in(condition.this, alias)
    if isinstance(condition, exp.And):
        left, right = _names_in(condition.this, alias), _names_in(condition.expression, alias)
        if left is None:
            return right
        if right is None:
            return left
        return left & right
    if isinstance(condition, exp.Or):
        left, right = _names_in(condition.this, alias), _names_in(condition.expression, alias)
        if left is None or right is None:
            return None
        return left | right
    if isinstance(condition, exp.EQ):
        for column, value in ((condition.this, condition.expression), (condition.expression, condition.this)):
            if _is_name_column(column, alias) and isinstance(value, exp.Literal) and value.is_string:
                return {value.name}
        return None
    if isinstance(condition, exp.In) and _is_name_column(condition.this, alias) and condition.expressions:
        values = condition.expressions
        if all(isinstance(v, exp.Literal) and v.is_string for v in values):
            return {v.name for v in values}
    return None


def _is_name_column(node: exp.Expression, alias: str) -> bool:
    return isinstance(node, exp.Column) and node.table == alias and node.name == "name"


@dataclass(frozen=True)
class UntiedRead:
    """A read of users or events not restricted to the evaluated user."""

    table: exp.Table


def untied_reads(tree: exp.Expression, is_user_filter) -> list[UntiedRead]:
    """Reads of users/events in a per-user tree that are not tied to the user.

    `is_user_filter(term)` recognizes the pushed `column = <user id>` term
    and returns its column, or None.
    """
    analyzer = _TieAnalyzer(is_user_filter)
    for cte in tree.find_all(exp.CTE):
        analyzer.cte_outputs[id(cte)] = analyzer.query_outputs(cte.this, set(), None)
    analyzer.query_outputs(tree, set(), None)
    return [UntiedRead(table) for table in analyzer.untied]


Key = tuple[str, str]


class _TieAnalyzer:
    def __init__(self, is_user_filter) -> None:
        self.is_user_filter = is_user_filter
        self.cte_outputs: dict[int, set[int]] = {}
        self.untied: list[exp.Table] = []
        self.seen: set[int] = set()

    def query_outputs(self, query: exp.Expression, outer: set[Key], seed: int | None) -> set[int]:
        """Analyze a query; return the positions of its output columns tied to the user."""
        query = scopes.unwrap(query)
        if isinstance(query, exp.SetOperation):
            left = self.query_outputs(query.this, outer, seed)
            right = self.query_outputs(query.expression, outer, seed)
            return left & right
        if isinstance(query, exp.Select):
            return self.select_outputs(query, outer, seed)
        return set()

    def select_outputs(self, select: exp.Select, outer: set[Key], seed: int | None) -> set[int]:
        if id(select) in self.seen:
            return set()
        self.seen.add(id(select))
        local_aliases = {scopes.source_alias(s) for s in scopes.sources(select)}
        bound: set[Key] = set()

        def key(column: exp.Column) -> Key:
            return (column.table, column.name)

        def is_bound(column: exp.Column) -> bool:
            if column.table in local_aliases:
                return key(column) in bound
            return key(column) in outer

        # Tied columns of derived tables and CTEs are tied here too.
        for source in scopes.sources(select):
            positions: set[int] = set()
            inner: exp.Expression | None = None
            if isinstance(source, exp.Subquery):
                inner = source.this
                positions = self.query_outputs(inner, set(), None)
            elif isinstance(source, exp.Table) and (cte := scopes.cte_of(source)) is not None:
                inner = cte.this
                positions = self.cte_outputs.get(id(cte), set())
            if inner is not None:
                names = _output_names(inner)
                for position in positions:
                    if position < len(names):
                        bound.add((scopes.source_alias(source), names[position]))

        for term in scopes.conjuncts(select.args.get("where")):
            column = self.is_user_filter(term)
            if column is not None:
                bound.add(key(column))
        if seed is not None and seed < len(select.expressions):
            projection = select.expressions[seed].unalias()
            if isinstance(projection, exp.Column):
                bound.add(key(projection))

        equalities = scopes.equalities(select)
        changed = True
        while changed:
            changed = False
            for a, b, only_into in equalities:
                for known, other in ((a, b), (b, a)):
                    if other.table not in local_aliases or key(other) in bound:
                        continue
                    if only_into is not None and other.table != only_into:
                        continue
                    if is_bound(known):
                        bound.add(key(other))
                        changed = True

        for source in scopes.sources(select):
            if scopes.is_base_table(source):
                if (scopes.source_alias(source), USER_KEY[source.name]) not in bound:
                    self.untied.append(source)

        # Subqueries see this SELECT's tied columns (correlation).
        visible = outer | bound
        for subquery in _nested_queries(select):
            in_seed = None
            parent = subquery.parent
            if isinstance(parent, exp.In) and isinstance(parent.this, exp.Column) and is_bound(parent.this):
                in_seed = 0
            self.query_outputs(subquery.this if isinstance(subquery, exp.Subquery) else subquery, visible, in_seed)

        tied = set()
        for position, projection in enumerate(select.expressions):
            column = projection.unalias()
            if isinstance(column, exp.Column) and is_bound(column):
                tied.add(position)
        return tied


def _output_names(query: exp.Expression) -> list[str]:
    first = scopes.unwrap(query)
    while isinstance(first, exp.SetOperation):
        first = scopes.unwrap(first.this)
    if not isinstance(first, exp.Select):
        return []
    return [p.alias_or_name.lower() for p in first.expressions]


def _nested_queries(select: exp.Select) -> list[exp.Expression]:
    """Subqueries of a SELECT outside its FROM (WHERE, SELECT list, HAVING, ON)."""
    found = []
    for node in select.find_all(exp.Subquery, exp.Select):
        if node is select:
            continue
        if isinstance(node, exp.Subquery) and node.alias:
            continue  # a derived table, analyzed as a source
        if isinstance(node, exp.Select) and isinstance(node.parent, exp.Subquery):
            continue  # reached through its Subquery wrapper
        if scopes.enclosing_select(node) is not select:
            continue
        if isinstance(node, exp.Select) and node.parent is not None and isinstance(node.parent, (exp.CTE, exp.SetOperation)):
            continue
        found.append(node)
    return found

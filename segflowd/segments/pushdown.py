"""Push a filter on the output `id` into the query, where the id is read.

Per-user evaluation needs only the rows of one user. Filtering the finished
result (`SELECT ... FROM (segment) AS seg WHERE seg.id = ?`) is always
right but makes the server compute the whole segment. Instead the filter
goes into the WHERE of the SELECT that reads the id from its table
(`u.id = ?` for users, `e.user_id = ?` for events), through derived tables
and CTEs, where that is provably the same as filtering the result:

- the output id is a plain column that traces down to users.id or
  events.user_id;
- no SELECT on the way has LIMIT/OFFSET, aggregates without grouping by
  the id, a GROUP BY that leaves out the id, or a window function whose
  PARTITION BY leaves out the id. Each of those mixes rows of several
  users into one result row;
- a CTE on the way is not recursive and is referenced once.

Each SELECT of a UNION gets the filter on its own. After the filter is in
place, it is also pushed, where it is equally safe, into derived tables
joined on the id (`JOIN (SELECT user_id, ... GROUP BY user_id) t ON
t.user_id = u.id`) and into `u.id IN (SELECT ...)` subqueries, so that
grouped subqueries read one user's rows too.

The same machinery pushes a range (`id >= ? AND id < ?`) for the batches
of a full evaluation; both predicates only test the id's value, so the
argument is the same. The caller keeps the filter on the finished result
as well, so a segment whose filter could not be pushed (or only partly)
still returns the right rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from sqlglot import exp

from segflowd.segments import scopes
from segflowd.segments.validate import USER_KEY

Predicate = Callable[[exp.Column], exp.Expression]


@dataclass
class PushOutcome:
    """Whether the filter reached every place the output id is read, and why not."""

    complete: bool
    reasons: list[str] = field(default_factory=list)


def push_filter(tree: exp.Expression, predicate: Predicate) -> PushOutcome:
    """Add `predicate(column)` where the output id is read; modifies `tree` in place."""
    pusher = _Pusher(tree, predicate)
    position = scopes.output_position(tree, "id")
    complete = position is not None and pusher.push_query(tree, position)
    if position is None:
        pusher.reasons.append("the output column id could not be located")
    # Keep each reason once, in the order found.
    return PushOutcome(complete, list(dict.fromkeys(pusher.reasons)))


class _Pusher:
    def __init__(self, root: exp.Expression, predicate: Predicate) -> None:
        self.predicate = predicate
        self.reasons: list[str] = []
        self.quiet = 0
        self.cte_references = Counter(
            id(cte) for table in root.find_all(exp.Table) if (cte := scopes.cte_of(table)) is not None
        )

    def fail(self, reason: str) -> bool:
        if not self.quiet:
            self.reasons.append(reason)
        return False

    def push_query(self, query: exp.Expression, position: int) -> bool:
        query = scopes.unwrap(query)
        if isinstance(query, exp.SetOperation):
            if query.args.get("limit") or query.args.get("offset"):
                return self.fail("LIMIT on a UNION keeps rows of other users")
            left = self.push_query(query.this, position)
            right = self.push_query(query.expression, position)
            return left and right
        if isinstance(query, exp.Select):
            return self.push_select(query, position)
        return self.fail(f"the id comes from {type(query).__name__.upper()}, which cannot be filtered")

    def push_select(self, select: exp.Select, position: int) -> bool:
        if position >= len(select.expressions):
            return self.fail("a SELECT of the UNION has fewer columns than the first")
        column = select.expressions[position].unalias()
        if not isinstance(column, exp.Column):
            return self.fail(f"the output id is computed ({column.sql(dialect='mysql')}), not read from a column")
        if select.args.get("limit") or select.args.get("offset"):
            return self.fail("LIMIT keeps a number of rows of all users, not of one")
        if not self._grouping_allows(select, column) or not self._windows_allow(select, column):
            return False

        source = scopes.find_source(select, column.table)
        pushed = self._push_into_source(select, source, column)
        if pushed:
            self._push_along(select, column)
        return pushed

    def _push_into_source(self, select: exp.Select, source: exp.Expression | None, column: exp.Column) -> bool:
        if source is None:
            return self.fail(f"the output id {column.sql(dialect='mysql')} comes from an outer query")
        if scopes.is_base_table(source):
            key = USER_KEY[source.name]
            if column.name != key:
                return self.fail(
                    f"the output id is {source.name}.{column.name}, not the user id column {source.name}.{key}"
                )
            select.where(self.predicate(column.copy()), append=True, copy=False)
            return True
        if isinstance(source, exp.Subquery):
            position = scopes.output_position(source.this, column.name)
            if position is None:
                return self.fail(f"column {column.name} of derived table {source.alias} could not be located")
            return self.push_query(source.this, position)
        if isinstance(source, exp.Table):
            cte = scopes.cte_of(source)
            if cte is None:
                return self.fail(f"the output id comes from {source.sql(dialect='mysql')}")
            with_ = cte.parent
            if isinstance(with_, exp.With) and with_.args.get("recursive"):
                return self.fail(f"the id comes from the recursive CTE {cte.alias}")
            if self.cte_references[id(cte)] > 1:
                return self.fail(f"the id comes from CTE {cte.alias}, which is referenced more than once")
            position = scopes.cte_output_position(cte, column.name)
            if position is None:
                return self.fail(f"column {column.name} of CTE {cte.alias} could not be located")
            return self.push_query(cte.this, position)
        return self.fail(f"the output id comes from {source.sql(dialect='mysql')}")

    def _grouping_allows(self, select: exp.Select, column: exp.Column) -> bool:
        group = select.args.get("group")
        if group is not None:
            keys = list(group.expressions)
            for grouping in ("rollup", "cube", "grouping_sets"):
                for item in group.args.get(grouping) or []:
                    keys += list(item.expressions) if hasattr(item, "expressions") and item.expressions else [item]
            if any(scopes.same_column(key, column) for key in keys):
                return True
            return self.fail(f"GROUP BY does not include {column.sql(dialect='mysql')}")
        aggregates = [
            node
            for part in (*select.expressions, select.args.get("having"), select.args.get("order"))
            if part is not None
            for node in part.find_all(exp.AggFunc)
            if scopes.owned_by(node, select) and node.find_ancestor(exp.Window) is None
        ]
        if aggregates:
            return self.fail("aggregates without GROUP BY combine the rows of all users")
        return True

    def _windows_allow(self, select: exp.Select, column: exp.Column) -> bool:
        named = {window.this.name: window for window in select.args.get("windows") or []}
        for window in select.find_all(exp.Window):
            if not scopes.owned_by(window, select) or window.parent is select and window.arg_key == "windows":
                continue
            if isinstance(window.this, exp.Identifier):
                continue  # a named window's definition, checked where it is used
            partition = list(window.args.get("partition_by") or [])
            reference = window.args.get("alias")
            if reference is not None and reference.name in named:
                partition += list(named[reference.name].args.get("partition_by") or [])
            if not any(scopes.same_column(item, column) for item in partition):
                return self.fail(
                    f"a window function does not PARTITION BY {column.sql(dialect='mysql')}, "
                    "so it ranks or sums across users"
                )
        return True

    def _push_along(self, select: exp.Select, column: exp.Column) -> None:
        """Also filter derived tables joined on the id, and `id IN (subquery)` terms."""
        bound = {(column.table, column.name)}
        pushed_into: set[str] = set()
        self.quiet += 1
        try:
            changed = True
            while changed:
                changed = False
                for a, b, only_into in scopes.equalities(select):
                    for known, other in ((a, b), (b, a)):
                        target = (other.table, other.name)
                        if (known.table, known.name) not in bound or target in bound:
                            continue
                        if only_into is not None and other.table != only_into:
                            continue
                        bound.add(target)
                        changed = True
                        source = scopes.find_source(select, other.table)
                        if source is None or scopes.is_base_table(source) or other.table in pushed_into:
                            continue
                        pushed_into.add(other.table)
                        self._push_into_source(select, source, other)
            for term in scopes.conjuncts(select.args.get("where")):
                query = term.args.get("query") if isinstance(term, exp.In) else None
                if query is None or not isinstance(term.this, exp.Column):
                    continue
                if (term.this.table, term.this.name) in bound:
                    self.push_query(query.this if isinstance(query, exp.Subquery) else query, 0)
        finally:
            self.quiet -= 1

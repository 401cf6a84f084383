"""Validation of segment SQL: one read-only SELECT over `users` and `events`.

The checks run in layers, each rejecting with the segment name, the reason
and the line and column of the offending text:

1. tokens: empty SQL, MySQL executable comments, more than one statement,
   a first keyword other than SELECT/WITH, SELECT ... INTO;
2. the parse tree (sqlglot, MySQL dialect): statement kind, INTO, locking
   clauses, variables, parameters, functions outside the allowed set,
   tables other than `users` and `events`;
3. column resolution against the two tables' columns (sqlglot's
   `qualify`), which also finds unknown and ambiguous columns offline;
4. the output: exactly one column named `id`.

The result is the qualified tree, on which the portable rewrite, the time
binding and the pushdown analysis work.
"""

from __future__ import annotations

import difflib

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.tokens import Token, TokenType

from segflowd.segments.errors import SegmentSQLError

# sqlglot warns on its logger when it falls back to an opaque Command for
# statements it cannot parse; those statements are rejected here anyway.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# The columns segment SQL may read, as sqlglot types (used to resolve and
# check column names; MySQL column names are case-insensitive).
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "users": {"id": "VARCHAR", "attributes": "JSON", "created_at": "DATETIME", "updated_at": "DATETIME"},
    "events": {
        "id": "BIGINT",
        "user_id": "VARCHAR",
        "name": "VARCHAR",
        "attributes": "JSON",
        "created_at": "DATETIME",
        "received_at": "DATETIME",
    },
}

# The column of each table that contains a user id: the columns the
# per-user filter is pushed onto.
USER_KEY = {"users": "id", "events": "user_id"}

_TABLE_LIST = "users (id, attributes, created_at, updated_at) and events (id, user_id, name, attributes, created_at, received_at)"

# Functions rejected by name, with the reason given to the user.
_WAITS = "makes the server wait"
_LOCKS = "takes or releases a named lock"
_STATE = "changes session or sequence state"
_RANDOM = "returns a different value on each call, so per-user and full evaluation could disagree"
_SESSION = "depends on the connection, not on users and events"
DENIED_FUNCTIONS: dict[str, str] = {
    "SLEEP": _WAITS,
    "BENCHMARK": "runs an expression many times to load the server",
    "LOAD_FILE": "reads a file on the database server",
    "GET_LOCK": _LOCKS,
    "RELEASE_LOCK": _LOCKS,
    "RELEASE_ALL_LOCKS": _LOCKS,
    "IS_FREE_LOCK": _LOCKS,
    "IS_USED_LOCK": _LOCKS,
    "MASTER_POS_WAIT": _WAITS,
    "SOURCE_POS_WAIT": _WAITS,
    "MASTER_GTID_WAIT": _WAITS,
    "WAIT_FOR_EXECUTED_GTID_SET": _WAITS,
    "WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS": _WAITS,
    "SYS_EXEC": "runs a program on the database server",
    "SYS_EVAL": "runs a program on the database server",
    "SYSTEM": "runs a program on the database server",
    "LAST_INSERT_ID": _STATE,
    "NEXTVAL": _STATE,
    "SETVAL": _STATE,
    "LASTVAL": _STATE,
    "RAND": _RANDOM,
    "UUID": _RANDOM,
    "UUID_SHORT": _RANDOM,
    "RANDOM_BYTES": _RANDOM,
    "SYS_GUID": _RANDOM,
    "CONNECTION_ID": _SESSION,
    "CURRENT_USER": _SESSION,
    "SESSION_USER": _SESSION,
    "SYSTEM_USER": _SESSION,
    "USER": _SESSION,
    "CURRENT_ROLE": _SESSION,
    "DATABASE": _SESSION,
    "SCHEMA": _SESSION,
    "VERSION": _SESSION,
    "FOUND_ROWS": _SESSION,
    "ROW_COUNT": _SESSION,
    "ICU_VERSION": _SESSION,
    "STATEMENT_DIGEST": _SESSION,
    "STATEMENT_DIGEST_TEXT": _SESSION,
}

# MySQL 8 built-in functions that segments may call. A name outside this
# set could be a stored function, which can write data, so it is rejected.
BUILTIN_FUNCTIONS = frozenset(
    """
    ABS ACOS ADDDATE ADDTIME AES_DECRYPT AES_ENCRYPT ANY_VALUE ASCII ASIN ATAN ATAN2 AVG
    BIN BIN_TO_UUID BIT_AND BIT_COUNT BIT_LENGTH BIT_OR BIT_XOR CAST CEIL CEILING CHAR
    CHAR_LENGTH CHARACTER_LENGTH CHARSET COALESCE COERCIBILITY COLLATION COMPRESS CONCAT
    CONCAT_WS CONV CONVERT CONVERT_TZ COS COT COUNT CRC32 CUME_DIST CURDATE CURRENT_DATE
    CURRENT_TIME CURRENT_TIMESTAMP CURTIME DATE DATE_ADD DATE_FORMAT DATE_SUB DATEDIFF DAY
    DAYNAME DAYOFMONTH DAYOFWEEK DAYOFYEAR DEGREES DENSE_RANK ELT EXP EXPORT_SET EXTRACT
    FIELD FIND_IN_SET FIRST_VALUE FLOOR FORMAT FROM_BASE64 FROM_DAYS FROM_UNIXTIME
    GET_FORMAT GREATEST GROUP_CONCAT HEX HOUR IF IFNULL INET_ATON INET_NTOA INET6_ATON
    INET6_NTOA INSERT INSTR INTERVAL IS_IPV4 IS_IPV4_COMPAT IS_IPV4_MAPPED IS_IPV6 IS_UUID
    ISNULL JSON_ARRAY JSON_ARRAY_APPEND JSON_ARRAY_INSERT JSON_ARRAYAGG JSON_CONTAINS
    JSON_CONTAINS_PATH JSON_DEPTH JSON_EXTRACT JSON_INSERT JSON_KEYS JSON_LENGTH JSON_MERGE
    JSON_MERGE_PATCH JSON_MERGE_PRESERVE JSON_OBJECT JSON_OBJECTAGG JSON_OVERLAPS JSON_PRETTY
    JSON_QUOTE JSON_REMOVE JSON_REPLACE JSON_SCHEMA_VALID JSON_SEARCH JSON_SET
    JSON_STORAGE_FREE JSON_STORAGE_SIZE JSON_TABLE JSON_TYPE JSON_UNQUOTE JSON_VALID
    JSON_VALUE LAG LAST_DAY LAST_VALUE LCASE LEAD LEAST LEFT LENGTH LN LOCALTIME
    LOCALTIMESTAMP LOCATE LOG LOG10 LOG2 LOWER LPAD LTRIM MAKE_SET MAKEDATE MAKETIME MAX MD5
    MICROSECOND MID MIN MINUTE MOD MONTH MONTHNAME NOW NTH_VALUE NTILE NULLIF OCT
    OCTET_LENGTH ORD PERCENT_RANK PERIOD_ADD PERIOD_DIFF PI POSITION POW POWER QUARTER QUOTE
    RADIANS RANK REGEXP_INSTR REGEXP_LIKE REGEXP_REPLACE REGEXP_SUBSTR REPEAT REPLACE REVERSE
    RIGHT ROUND ROW_NUMBER RPAD RTRIM SEC_TO_TIME SECOND SHA SHA1 SHA2 SIGN SIN SOUNDEX SPACE
    SQRT STD STDDEV STDDEV_POP STDDEV_SAMP STR_TO_DATE STRCMP SUBDATE SUBSTR SUBSTRING
    SUBSTRING_INDEX SUBTIME SUM SYSDATE TAN TIME TIME_FORMAT TIME_TO_SEC TIMEDIFF TIMESTAMP
    TIMESTAMPADD TIMESTAMPDIFF TO_BASE64 TO_DAYS TO_SECONDS TRIM TRUNCATE UCASE UNCOMPRESS
    UNCOMPRESSED_LENGTH UNHEX UNIX_TIMESTAMP UPPER UTC_DATE UTC_TIME UTC_TIMESTAMP
    UUID_TO_BIN VAR_POP VAR_SAMP VARIANCE WEEK WEEKDAY WEEKOFYEAR WEIGHT_STRING YEAR YEARWEEK
    """.split()
)

# MySQL's time functions that may appear without parentheses and that
# sqlglot parses as column names.
BARE_TIME_FUNCTIONS = {
    "UTC_TIMESTAMP": exp.UtcTimestamp,
    "UTC_DATE": exp.UtcDate,
    "UTC_TIME": exp.UtcTime,
    "CURRENT_TIMESTAMP": exp.CurrentTimestamp,
    "CURRENT_DATE": exp.CurrentDate,
    "CURRENT_TIME": exp.CurrentTime,
    "LOCALTIME": exp.Localtime,
    "LOCALTIMESTAMP": exp.Localtimestamp,
}

_WRITES = "writes data"
_DDL = "changes the schema"
_STATEMENT_REASONS = {
    "INSERT": _WRITES,
    "UPDATE": _WRITES,
    "DELETE": _WRITES,
    "REPLACE": _WRITES,
    "MERGE": _WRITES,
    "LOAD": "loads a file into a table",
    "CREATE": _DDL,
    "ALTER": _DDL,
    "DROP": _DDL,
    "TRUNCATE": _DDL,
    "RENAME": _DDL,
    "CALL": "calls a stored procedure",
    "DO": "runs expressions for their side effects",
    "SET": "sets variables",
    "HANDLER": "reads tables through a handler",
    "GRANT": "changes privileges",
    "REVOKE": "changes privileges",
}


@dataclass
class SourceText:
    """A segment's SQL text and its tokens, for locating problems."""

    segment: str
    sql: str
    file: Path | None
    tokens: list[Token]

    def position(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        offset = max(0, min(offset, len(self.sql)))
        line = self.sql.count("\n", 0, offset) + 1
        column = offset - (self.sql.rfind("\n", 0, offset) + 1) + 1
        return line, column

    def error(self, reason: str, offset: int | None) -> SegmentSQLError:
        line, column = self.position(offset or 0)
        return SegmentSQLError(self.segment, reason, line, column, self.file)

    def node_error(self, reason: str, node: exp.Expression) -> SegmentSQLError:
        return self.error(reason, node_offset(node))

    def keyword_offset(self, *types: TokenType) -> int | None:
        """Offset of the first run of tokens with these types, in order."""
        for i in range(len(self.tokens) - len(types) + 1):
            if all(self.tokens[i + j].token_type == kind for j, kind in enumerate(types)):
                return self.tokens[i].start
        return None

    def text_offset(self, pattern: str) -> int | None:
        """Offset of the first match of a regular expression outside string literals."""
        strings = [(t.start, t.end) for t in self.tokens if t.token_type == TokenType.STRING]
        for match in re.finditer(pattern, self.sql, re.IGNORECASE):
            if not any(start <= match.start() <= end for start, end in strings):
                return match.start()
        return None

    def word_offset(self, word: str) -> int | None:
        """Offset of the first token whose text is `word` (case-insensitive)."""
        for token in self.tokens:
            if token.text.upper() == word.upper():
                return token.start
        return None


def node_offset(node: exp.Expression) -> int | None:
    """The smallest source offset recorded in a node or its descendants, else its ancestors'."""
    current: exp.Expression | None = node
    while current is not None:
        starts = [n.meta["start"] for n in current.walk() if n._meta and "start" in n._meta]
        if starts:
            return min(starts)
        current = current.parent
    return None


@dataclass
class ValidatedSQL:
    """A segment's SQL that passed validation."""

    source: SourceText
    tree: exp.Query
    # False when sqlglot could not resolve the columns; the SQL then runs
    # as written, without pushdown or event-name analysis.
    qualified: bool
    qualify_problem: str | None = None


def validate_sql(segment: str, sql: str, file: Path | None = None) -> ValidatedSQL:
    """Validate one segment's SQL; raise SegmentSQLError on the first problem."""
    source = _tokenize(segment, sql, file)
    _check_tokens(source)
    tree = _parse(source)
    _check_tree(source, tree)
    _normalize(tree)
    tree, qualified, problem = _qualify(source, tree)
    _check_output(source, tree)
    return ValidatedSQL(source, tree, qualified, problem)


# --- layer 1: tokens ---------------------------------------------------------


def _tokenize(segment: str, sql: str, file: Path | None) -> SourceText:
    try:
        tokens = sqlglot.tokenize(sql, read="mysql")
    except TokenError as exc:
        offset = _offset_from_message(sql, str(exc))
        probe = SourceText(segment, sql, file, [])
        raise probe.error(f"invalid SQL: {_first_line(str(exc))}", offset) from None
    return SourceText(segment, sql, file, tokens)


def _check_tokens(source: SourceText) -> None:
    tokens = source.tokens
    if not tokens:
        raise source.error("the SQL is empty; write one SELECT that returns a column named id", 0)

    # MySQL runs the text of /*! ... */ and MariaDB that of /*M! ... */ as
    # SQL, so such a comment would hide SQL from validation.
    if any(comment.lstrip().startswith(("!", "M!")) for token in tokens for comment in token.comments):
        offset = _executable_comment_offset(source)
        raise source.error(
            "executable comments (/*! ... */ or /*M! ... */) are not allowed: "
            "the server runs their text as SQL; write the SQL outside the comment",
            offset,
        )

    for i, token in enumerate(tokens[:-1]):
        if token.token_type == TokenType.SEMICOLON and any(t.token_type != TokenType.SEMICOLON for t in tokens[i + 1 :]):
            following = next(t for t in tokens[i + 1 :] if t.token_type != TokenType.SEMICOLON)
            raise source.error(
                "more than one statement: a segment is one SELECT; remove the text after the semicolon",
                following.start,
            )

    first = tokens[0]
    if first.token_type not in (TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN):
        keyword = first.text.upper()
        why = _STATEMENT_REASONS.get(keyword)
        reason = f"{keyword} is not allowed"
        if why:
            reason += f": it {why}"
        elif first.token_type == TokenType.VAR:
            reason = f"unknown statement {first.text!r}"
            if difflib.get_close_matches(keyword, ["SELECT", "WITH"], n=1, cutoff=0.6):
                reason += " (did you mean SELECT?)"
        raise source.error(f"{reason}; a segment is one SELECT (CTEs, subqueries and UNION are allowed)", first.start)

    for token in tokens:
        if token.token_type == TokenType.INTO:
            raise source.error(
                "SELECT ... INTO is not allowed: it writes to variables or files; a segment only returns rows",
                token.start,
            )


def _executable_comment_offset(source: SourceText) -> int | None:
    inside_tokens = [(t.start, t.end) for t in source.tokens]
    for match in re.finditer(r"/\*M?!", source.sql):
        if not any(start <= match.start() <= end for start, end in inside_tokens):
            return match.start()
    return None


# --- layer 2: the parse tree -------------------------------------------------

_MISSING_PART = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*\.(\w+)'>")


def _plain_parse_error(description: str) -> str:
    """Reword sqlglot's "Required keyword: 'this' missing for <class ...Where>" as SQL terms."""
    match = _MISSING_PART.search(description)
    if match is None:
        return description
    clause = re.sub(r"(?<!^)(?=[A-Z])", " ", match.group(2)).upper()
    return f"the {clause} clause is incomplete: it needs an expression after the keyword"


def _parse(source: SourceText) -> exp.Query:
    try:
        statements = [s for s in sqlglot.parse(source.sql, read="mysql") if s is not None]
    except ParseError as exc:
        detail = exc.errors[0] if exc.errors else {}
        highlight = detail.get("highlight") or ""
        line, col = detail.get("line"), detail.get("col")
        description = _plain_parse_error(detail.get("description") or _first_line(str(exc)))
        if line and col:
            # sqlglot reports the column of the token's last character.
            column = max(1, int(col) - len(highlight) + 1)
            near = f" near {highlight!r}" if highlight else ""
            raise SegmentSQLError(
                source.segment, f"invalid SQL{near}: {description}", int(line), column, source.file
            ) from None
        raise source.error(f"invalid SQL: {description}", 0) from None
    if len(statements) != 1:
        raise source.error("expected exactly one SELECT statement", 0)
    statement = statements[0]
    while isinstance(statement, exp.Subquery) and not statement.alias:
        statement = statement.this
    if not isinstance(statement, exp.Query) or isinstance(statement, exp.Values):
        kind = type(statement).__name__.upper()
        raise source.error(f"{kind} statements are not allowed; a segment is one SELECT", 0)
    return statement


def _check_tree(source: SourceText, tree: exp.Query) -> None:
    cte_names = {cte.alias for cte in tree.find_all(exp.CTE)}
    for name in cte_names & set(TABLE_COLUMNS):
        cte = next(c for c in tree.find_all(exp.CTE) if c.alias == name)
        raise source.node_error(f"the CTE name {name} hides the {name} table; rename the CTE", cte.args["alias"])

    for node in tree.walk():
        if node.find_ancestor(exp.Hint) is not None:
            continue  # optimizer hints (/*+ ... */) name no functions; they are dropped below
        if isinstance(node, exp.Interval) and isinstance(node.this, exp.Tuple):
            raise source.error(
                "INTERVAL(n, n1, n2, ...) is not supported; write CASE WHEN n < n1 THEN 0 WHEN ... END",
                source.text_offset(r"\bINTERVAL\s*\(") or node_offset(node),
            )
        if isinstance(node, exp.Into):
            raise source.error(
                "SELECT ... INTO is not allowed: it writes to variables or files; a segment only returns rows",
                source.keyword_offset(TokenType.INTO) or node_offset(node),
            )
        if isinstance(node, exp.Select) and node.args.get("locks"):
            offset = source.keyword_offset(TokenType.FOR, TokenType.UPDATE) or source.keyword_offset(TokenType.FOR)
            offset = offset if offset is not None else source.word_offset("LOCK")
            raise source.error(
                "locking clauses (FOR UPDATE, FOR SHARE, LOCK IN SHARE MODE) are not allowed: "
                "a segment must not lock rows that ingest writes",
                offset,
            )
        if isinstance(node, exp.PropertyEQ):
            raise source.error(
                "variable assignment (:=) is not allowed: a segment must not change state",
                source.text_offset(r":=") or node_offset(node),
            )
        if isinstance(node, exp.SessionParameter):
            raise source.error(
                f"system variable @@{node.name} is not allowed: a segment may depend only on users and events",
                source.text_offset(r"@@\s*(?:(?:global|session|local)\.)?" + re.escape(node.name)) or node_offset(node),
            )
        if isinstance(node, exp.Parameter):
            raise source.error(
                f"user variable @{node.name} is not allowed: a segment may depend only on users and events",
                source.text_offset(r"(?<!@)@" + re.escape(node.name)) or node_offset(node),
            )
        if isinstance(node, exp.Placeholder):
            raise source.node_error("query parameters (? or :name) are not allowed: write the value in the SQL", node)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise source.node_error(
                f"qualified function call {node.sql(dialect='mysql')} is not allowed: "
                "stored functions can change data; use MySQL built-in functions",
                node,
            )
        if isinstance(node, exp.Func):
            _check_function(source, node)
        if isinstance(node, exp.Table):
            _check_table(source, node, cte_names)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    return node.sql_name().upper()


def _check_function(source: SourceText, node: exp.Func) -> None:
    name = _function_name(node)
    if isinstance(node, (exp.Rand, exp.Uuid)) or name in DENIED_FUNCTIONS:
        why = DENIED_FUNCTIONS.get(name, _RANDOM)
        offset = node_offset(node) if node._meta else source.word_offset(name)
        raise source.error(f"function {name}() is not allowed: it {why}", offset if offset is not None else node_offset(node))
    if isinstance(node, exp.Anonymous) and name not in BUILTIN_FUNCTIONS:
        raise source.node_error(
            f"unknown function {name}(): segments may call MySQL 8 built-in functions only "
            "(stored functions can change data)",
            node,
        )


def _check_table(source: SourceText, table: exp.Table, cte_names: set[str]) -> None:
    if not isinstance(table.this, exp.Identifier):
        return  # JSON_TABLE(...) and other table functions read no table
    name = table.name
    if table.args.get("db") or table.args.get("catalog"):
        raise source.node_error(
            f"table {table.sql(dialect='mysql')} is in another database: segments may read only users and events",
            table,
        )
    if name in cte_names or name in TABLE_COLUMNS:
        return
    if name.upper() == "DUAL" and not table.this.quoted:
        return
    if name.lower() in TABLE_COLUMNS:
        raise source.node_error(f"unknown table {name}: table names are case-sensitive; write {name.lower()}", table)
    raise source.node_error(f"table {name} is not allowed: segments may read only {_TABLE_LIST}", table)


# --- layer 3: columns ------------------------------------------------------------


def _normalize(tree: exp.Query) -> None:
    """Lower-case column names and turn bare time keywords into function nodes.

    MySQL compares column names and column aliases case-insensitively, while
    sqlglot's MySQL dialect compares identifiers exactly. Table names and
    table aliases stay as written: MySQL on Linux compares them exactly.
    """
    for column in list(tree.find_all(exp.Column)):
        identifier = column.this
        if not isinstance(identifier, exp.Identifier):
            continue
        bare_time = BARE_TIME_FUNCTIONS.get(identifier.name.upper())
        if bare_time is not None and not column.table and not identifier.quoted:
            column.replace(bare_time())
            continue
        identifier.set("this", identifier.name.lower())
    for alias in tree.find_all(exp.Alias):
        identifier = alias.args.get("alias")
        if isinstance(identifier, exp.Identifier):
            identifier.set("this", identifier.name.lower())
    for table_alias in tree.find_all(exp.TableAlias):
        for identifier in table_alias.args.get("columns") or []:
            if isinstance(identifier, exp.Identifier):
                identifier.set("this", identifier.name.lower())
    for hint in list(tree.find_all(exp.Hint)):
        # Optimizer hints change plans, not results, and MariaDB ignores MySQL's.
        hint.pop()
    for table in list(tree.find_all(exp.Table)):
        if isinstance(table.this, exp.Identifier) and table.name.upper() == "DUAL" and not table.this.quoted:
            # FROM DUAL is the same as no FROM clause.
            from_ = table.parent
            if isinstance(from_, exp.From):
                from_.pop()


def _qualify(source: SourceText, tree: exp.Query) -> tuple[exp.Query, bool, str | None]:
    """Qualify every column with its table alias; raise on unknown or ambiguous columns."""
    try:
        qualified = qualify(
            tree.copy(),
            dialect="mysql",
            schema=TABLE_COLUMNS,
            validate_qualify_columns=True,
            quote_identifiers=False,
            identify=False,
        )
    except OptimizeError as exc:
        message = _first_line(str(exc))
        unknown = re.match(r"Unknown column: (.+)$", message)
        if unknown:
            name = unknown.group(1)
            node = next((c for c in tree.find_all(exp.Column) if c.name == name.lower()), tree)
            raise source.node_error(f"unknown column {name}: segments read {_TABLE_LIST}", node) from None
        unresolved = re.match(r"Column '(.+?)' could not be resolved(?: for table: '(.+?)')?", message)
        if unresolved:
            name, table = unresolved.group(1), unresolved.group(2)
            node = next(
                (c for c in tree.find_all(exp.Column) if c.name == name and (table is None or c.table == table)),
                tree,
            )
            if table:
                reason = f"column {table}.{name} could not be resolved: no table or alias {table} in scope has it"
            else:
                reason = (
                    f"column {name} is ambiguous or unknown here: qualify it with a table alias, as in u.{name}"
                )
            raise source.node_error(reason, node) from None
        return tree, False, message
    except Exception as exc:  # noqa: BLE001 - any other sqlglot limit means "run without analysis"
        return tree, False, _first_line(str(exc)) or type(exc).__name__
    return qualified, True, None


# --- layer 4: the output ---------------------------------------------------------


def output_names(query: exp.Query) -> list[str]:
    """Names of a query's output columns, from its first SELECT for a UNION."""
    while isinstance(query, exp.SetOperation):
        query = query.this
    while isinstance(query, exp.Subquery):
        query = query.this
    if not isinstance(query, exp.Select):
        return []
    return [projection.alias_or_name.lower() for projection in query.expressions]


def _check_output(source: SourceText, tree: exp.Query) -> None:
    names = output_names(tree)
    first = tree
    while isinstance(first, (exp.SetOperation, exp.Subquery)):
        first = first.this
    if "*" in names:
        node = next(iter(first.find_all(exp.Star)), first) if isinstance(first, exp.Select) else tree
        raise source.node_error(
            "SELECT * is not allowed here: name the output column, as in SELECT u.id", node
        )
    count = names.count("id")
    if count == 1:
        return
    anchor = first.expressions[0] if isinstance(first, exp.Select) and first.expressions else tree
    if count == 0:
        listed = ", ".join(names) or "none"
        raise source.node_error(
            f"the result has no column named id (columns: {listed}); "
            "select the user id as id, as in SELECT e.user_id AS id",
            anchor,
        )
    raise source.node_error(
        f"the result has {count} columns named id; keep one, or alias the others", anchor
    )


# --- helpers -----------------------------------------------------------------------


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _offset_from_message(sql: str, message: str) -> int:
    match = re.search(r"[Ll]ine:? (\d+), [Cc]ol:? (\d+)", message)
    if not match:
        return 0
    line, column = int(match.group(1)), int(match.group(2))
    lines = sql.split("\n")
    return sum(len(text) + 1 for text in lines[: line - 1]) + max(0, column - 1)

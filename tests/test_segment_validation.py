"""Rejected segment SQL: each unsafe or invalid query gets its own reason, line and column."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from segflowd.clock import FakeClock
from segflowd.config import SegmentConfig
from segflowd.segments.compiler import compile_segment
from segflowd.segments.engine import SegmentEngine
from segflowd.segments.errors import InvalidSegmentsError, SegmentSQLError

NOW = datetime(2024, 6, 15, 12, 0)

# (SQL, part of the reason, line, column)
REJECTED: list[tuple[str, str, int, int]] = [
    ("", "the SQL is empty", 1, 1),
    ("SELECT id FROM users;\nSELECT id FROM events", "more than one statement", 2, 1),
    ("INSERT INTO users (id) VALUES ('x')", "INSERT is not allowed: it writes data", 1, 1),
    ("UPDATE users SET attributes = '{}'", "UPDATE is not allowed: it writes data", 1, 1),
    ("DELETE FROM events", "DELETE is not allowed: it writes data", 1, 1),
    ("REPLACE INTO users VALUES ('x', '{}', NOW(), NOW())", "REPLACE is not allowed: it writes data", 1, 1),
    ("DROP TABLE users", "DROP is not allowed: it changes the schema", 1, 1),
    ("CALL refresh_users()", "CALL is not allowed: it calls a stored procedure", 1, 1),
    ("SET @x = 1", "SET is not allowed: it sets variables", 1, 1),
    ("SELECT id\nFROM users\nINTO OUTFILE '/tmp/users'", "SELECT ... INTO is not allowed", 3, 1),
    ("SELECT id INTO @last FROM users", "SELECT ... INTO is not allowed", 1, 11),
    ("SELECT id FROM users\nFOR UPDATE", "locking clauses", 2, 1),
    ("SELECT u.id FROM users u\n  LOCK IN SHARE MODE", "locking clauses", 2, 3),
    ("SELECT id FROM users WHERE 1 = (SELECT 1 FROM events FOR UPDATE)", "locking clauses", 1, 54),
    ("SELECT (@n := @n + 1) AS id FROM users", "variable assignment (:=) is not allowed", 1, 12),
    ("SELECT id FROM users WHERE attributes->>'$.plan' = @plan", "user variable @plan is not allowed", 1, 52),
    ("SELECT id FROM users WHERE @@sql_mode <> ''", "system variable @@sql_mode is not allowed", 1, 28),
    ("SELECT id FROM users\nWHERE SLEEP(5) = 0", "function SLEEP() is not allowed: it makes the server wait", 2, 7),
    ("SELECT id FROM users WHERE BENCHMARK(1000000, MD5('x')) = 0", "function BENCHMARK() is not allowed", 1, 28),
    ("SELECT LOAD_FILE('/etc/passwd') AS id", "function LOAD_FILE() is not allowed: it reads a file", 1, 8),
    ("SELECT id FROM users WHERE GET_LOCK('segflow', 10)", "function GET_LOCK() is not allowed: it takes or releases a named lock", 1, 28),
    ("SELECT id FROM users WHERE RELEASE_LOCK('segflow')", "function RELEASE_LOCK() is not allowed", 1, 28),
    ("SELECT id FROM users WHERE RAND() < 0.1", "function RAND() is not allowed: it returns a different value", 1, 28),
    ("SELECT CONNECTION_ID() AS id", "function CONNECTION_ID() is not allowed: it depends on the connection", 1, 8),
    ("SELECT id FROM users WHERE discount_for(id) > 0", "unknown function DISCOUNT_FOR()", 1, 28),
    ("SELECT shop.discount(id) AS id FROM users", "qualified function call shop.discount(id) is not allowed", 1, 8),
    ("SELECT id FROM users /*!50000 UNION SELECT user FROM mysql.user */", "executable comments", 1, 22),
    ("SELECT segment AS id FROM segment_members", "table segment_members is not allowed", 1, 27),
    ("SELECT User AS id FROM mysql.user", "table mysql.user is in another database", 1, 24),
    ("SELECT id FROM Users", "unknown table Users: table names are case-sensitive", 1, 16),
    ("WITH users AS (SELECT 'x' AS id) SELECT id FROM users", "the CTE name users hides the users table", 1, 6),
    ("SELECT user_id FROM events", "the result has no column named id (columns: user_id)", 1, 8),
    ("SELECT * FROM users u JOIN events e ON e.user_id = u.id", "the result has 2 columns named id", 1, 15),
    ("SELECT u.id FROM users u WHERE u.atributes->>'$.plan' = 'pro'", "unknown column atributes", 1, 32),
    ("SELECT id FROM users u JOIN events e ON e.user_id = u.id", "column id is ambiguous or unknown here", 1, 8),
    ("SELECT id FROM users u WHERE u.id = x.id", "column x.id could not be resolved", 1, 37),
    ("SELECT id FROM users WHERE (attributes", "invalid SQL near 'attributes'", 1, 29),
    ("SELECT id FROM users WHERE id = ?", "query parameters (? or :name) are not allowed", 1, 28),
    ("SELECT id FROM users WHERE INTERVAL(5, 1, 10) = 1", "INTERVAL(n, n1, n2, ...) is not supported", 1, 28),
    ("SELECT id FROM users WHERE NOW(7) > created_at", "the precision of NOW(7) must be a number from 0 to 6", 1, 28),
    ("SELECT id FROM users\nWHERE CAST(attributes AS JSON) IS NOT NULL", "CAST(... AS JSON) does not exist on MariaDB", 2, 12),
    ("SELECT id FROM users WHERE REGEXP_LIKE(id, 'a', 'x')", "REGEXP_LIKE match type 'x' has no portable form", 1, 49),
    (
        "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.a') = CAST('[1]' AS JSON)",
        "comparing with a JSON array or object is not portable",
        1,
        67,
    ),
    (
        "SELECT u.id FROM users u WHERE u.created_at MEMBER OF (u.attributes->'$.dates')",
        "MEMBER OF needs a literal or text value on its left",
        1,
        32,
    ),
]


def segment(sql: str, name: str = "s", file: Path | None = None) -> SegmentConfig:
    return SegmentConfig(name, sql, file, timedelta(minutes=1))


def test_rejection_corpus_size():
    assert len(REJECTED) >= 15


@pytest.mark.parametrize("sql,reason,line,column", REJECTED, ids=[r[1][:40] for r in REJECTED])
def test_rejected_sql(sql, reason, line, column):
    with pytest.raises(SegmentSQLError) as info:
        compile_segment(segment(sql, name="candidate"))
    error = info.value
    assert reason in error.reason
    assert (error.line, error.column) == (line, column)
    assert error.segment == "candidate"
    assert str(error).startswith(f"segments.candidate: line {line}, column {column}: ")


def test_rejections_have_distinct_messages():
    messages = set()
    for sql, _, _, _ in REJECTED:
        with pytest.raises(SegmentSQLError) as info:
            compile_segment(segment(sql))
        messages.add((info.value.reason, info.value.line, info.value.column))
    assert len(messages) == len(REJECTED)


def test_error_names_the_sql_file(tmp_path):
    path = tmp_path / "bad.sql"
    with pytest.raises(SegmentSQLError) as info:
        compile_segment(segment("-- first line\nSELECT id FROM users WHERE SLEEP(1)", name="bad", file=path))
    assert str(info.value).startswith(f"segments.bad ({path}): line 2, column 28: function SLEEP()")


def test_string_literals_are_not_checked_as_sql():
    compiled = compile_segment(segment("SELECT id FROM users WHERE attributes->>'$.note' = 'SLEEP(1); /*! x */ INTO @a'"))
    assert "SLEEP(1); /*! x */ INTO @a" in compiled.query.sql


def test_engine_lists_every_invalid_segment():
    config = SimpleNamespace(
        segments={
            "ok": segment("SELECT id FROM users", name="ok"),
            "sleepy": segment("SELECT id FROM users WHERE SLEEP(1)", name="sleepy"),
            "writer": segment("DELETE FROM users", name="writer"),
        }
    )
    with pytest.raises(InvalidSegmentsError) as info:
        SegmentEngine(config, None, FakeClock(NOW))
    names = [error.segment for error in info.value.errors]
    assert names == ["sleepy", "writer"]
    assert "segments.sleepy: line 1, column 28" in str(info.value)
    assert "segments.writer: line 1, column 1" in str(info.value)



def test_incomplete_clause_is_named_in_sql_terms():
    with pytest.raises(SegmentSQLError) as info:
        compile_segment(segment("SELECT id FROM users WHERE"))
    message = str(info.value)
    assert "the WHERE clause is incomplete" in message
    assert "sqlglot" not in message
    assert "<class" not in message


def test_misspelt_select_suggests_select():
    with pytest.raises(SegmentSQLError) as info:
        compile_segment(segment("SELEC id FROM users"))
    assert "unknown statement 'SELEC' (did you mean SELECT?)" in str(info.value)

"""The regenerated SQL: MariaDB-compatible forms with MySQL's results, and time binding."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from segflowd.config import SegmentConfig
from segflowd.queries import QUERIES
from segflowd.segments.compiler import compile_segment
from segflowd.segments.params import DATE, NOW, TIME, UNIX, Param, compose, time_value

AT = datetime(2024, 6, 15, 12, 30, 45, 123456)


def compiled(sql: str):
    return compile_segment(SegmentConfig("s", sql, None, timedelta(minutes=1)))


def test_arrows_become_json_functions():
    sql = compiled("SELECT u.id FROM users u WHERE u.attributes->>'$.plan' = 'pro' AND u.attributes->'$.n' > 1").query.sql
    assert "->" not in sql
    assert "JSON_UNQUOTE(JSON_EXTRACT(u.attributes, '$.plan')) = 'pro'" in sql
    assert "JSON_EXTRACT(u.attributes, '$.n')" in sql


def test_json_in_list_compares_unquoted_strings():
    sql = compiled("SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.plan') IN ('pro', 'max')").query.sql
    assert "JSON_TYPE(JSON_EXTRACT(users.attributes, '$.plan')) = 'STRING'" in sql
    assert "JSON_UNQUOTE(JSON_EXTRACT(users.attributes, '$.plan')) IN ('pro', 'max')" in sql


def test_member_of_becomes_json_contains():
    sql = compiled("SELECT id FROM users WHERE 'beta' MEMBER OF (attributes->'$.tags')").query.sql
    assert "MEMBER OF" not in sql
    assert "JSON_CONTAINS(JSON_EXTRACT(users.attributes, '$.tags'), '\"beta\"')" in sql


def test_regexp_like_becomes_regexp_with_inline_flags():
    sql = compiled("SELECT id FROM users WHERE REGEXP_LIKE(id, '^a', 'ci')").query.sql
    assert "REGEXP_LIKE" not in sql
    assert "users.id REGEXP '(?-i)(?i)^a'" in sql


def test_any_value_becomes_min():
    sql = compiled("SELECT user_id AS id, ANY_VALUE(name) AS n FROM events GROUP BY user_id").query.sql
    assert "ANY_VALUE" not in sql
    assert "MIN(events.name)" in sql


def test_json_value_returning_becomes_cast():
    sql = compiled("SELECT id FROM users WHERE JSON_VALUE(attributes, '$.age' RETURNING SIGNED) > 40").query.sql
    assert "RETURNING" not in sql
    assert "CAST(JSON_VALUE(users.attributes, '$.age') AS SIGNED) > 40" in sql


def test_json_cast_literal_is_plain_value():
    sql = compiled("SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.plan') = CAST('\"pro\"' AS JSON)").query.sql
    assert "AS JSON" not in sql
    assert "JSON_UNQUOTE(JSON_EXTRACT(users.attributes, '$.plan')) = 'pro'" in sql


def test_json_cast_in_json_function_passes_text():
    sql = compiled("SELECT id FROM users WHERE JSON_CONTAINS(attributes, CAST('[\"beta\"]' AS JSON), '$.tags')").query.sql
    assert "JSON_CONTAINS(users.attributes, '[\"beta\"]', '$.tags')" in sql


def test_percent_is_doubled_for_the_driver():
    statement = compiled("SELECT id FROM users WHERE attributes->>'$.email' LIKE '%@acme.com' AND 7 % 2 = 1").query
    assert "'%%@acme.com'" in statement.sql
    assert "7 %% 2 = 1" in statement.sql
    assert statement.params == ()


def test_time_functions_become_parameters():
    segment = compiled(
        "SELECT id FROM users WHERE created_at > NOW() - INTERVAL 1 DAY AND DATE(created_at) < CURDATE()"
        " AND UNIX_TIMESTAMP() > 0 AND created_at < UTC_TIMESTAMP(3) AND TIME(created_at) < CURTIME()"
    )
    assert [p.kind for p in segment.query.params] == [NOW, DATE, UNIX, NOW, TIME]
    assert segment.query.params[3] == Param(NOW, 3)
    for name in ("NOW()", "CURDATE()", "UNIX_TIMESTAMP()", "UTC_TIMESTAMP", "CURTIME()"):
        assert name not in segment.query.sql
    assert segment.time_dependent


def test_unix_timestamp_with_argument_is_not_bound():
    segment = compiled("SELECT id FROM users WHERE UNIX_TIMESTAMP(created_at) > 0")
    assert not segment.time_dependent
    assert "UNIX_TIMESTAMP(users.created_at)" in segment.query.sql


@pytest.mark.parametrize(
    "param,value",
    [
        (Param(NOW), "2024-06-15 12:30:45"),
        (Param(NOW, 3), "2024-06-15 12:30:45.123"),
        (Param(NOW, 6), "2024-06-15 12:30:45.123456"),
        (Param(DATE), "2024-06-15"),
        (Param(TIME), "12:30:45"),
        (Param(TIME, 2), "12:30:45.12"),
        (Param(UNIX), 1718454645),
    ],
)
def test_time_values_as_mysql_returns_them(param, value):
    assert time_value(param, AT) == value


async def test_time_parameters_run_on_the_server(db):
    segment = compiled(
        "SELECT 'x' AS id FROM users WHERE NOW(6) = '2024-06-15 12:30:45.123456' AND CURDATE() = '2024-06-15'"
        " AND CURTIME() = '12:30:45' AND UNIX_TIMESTAMP() = 1718454645 AND LOCALTIME = '2024-06-15 12:30:45'"
    )
    await db.fetch_all("INSERT INTO users (id, attributes, created_at, updated_at) VALUES ('u', '{}', %s, %s)", (AT, AT))
    statement = compose(QUERIES.count_segment, segment.query)
    row = await db.fetch_one(statement.sql, statement.args(AT))
    assert row["members"] == 1


# --- MySQL's JSON comparison rules, checked on the server ---------------------------

# JSON values stored under $.v ("missing" means no such key).
JSON_VALUES = ['"pro"', '"PRO"', '"5"', "5", "5.0", "7", "true", "false", "null", "[1]", '{"a": 1}', "missing"]
# MySQL's JSON type order, lowest first (numbers share a rank).
RANK = {"null": 0, "number": 1, "string": 2, "object": 3, "array": 4, "boolean": 5}


def json_kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def mysql_compare(text: str, op: str, literal):
    """What MySQL 8 returns for `JSON_EXTRACT(doc, '$.v') <op> literal`: True, False or None (NULL)."""
    if text == "missing":
        return False if op == "<=>" else None
    value = json.loads(text)
    left_kind, right_kind = json_kind(value), json_kind(literal)
    if left_kind != right_kind:
        order = (RANK[left_kind] > RANK[right_kind]) - (RANK[left_kind] < RANK[right_kind])
    elif left_kind == "string":
        a, b = value.encode(), literal.encode()
        order = (a > b) - (a < b)
    else:
        order = (value > literal) - (value < literal)
    return {"=": order == 0, "<=>": order == 0, "<>": order != 0, "<": order < 0, "<=": order <= 0, ">": order > 0, ">=": order >= 0}[op]


COMPARISONS = [(op, literal) for op in ("=", "<>", "<", ">=", "<=>") for literal in ("pro", 5, True)]


async def test_json_comparisons_match_mysql(db):
    rows = []
    for index, text in enumerate(JSON_VALUES):
        document = "{}" if text == "missing" else '{"v": ' + text + "}"
        rows.append((f"v{index}", document, AT, AT))
    async with db.transaction() as cur:
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", rows)

    for op, literal in COMPARISONS:
        sql_literal = {True: "TRUE", 5: "5", "pro": "'pro'"}[literal]
        condition = f"JSON_EXTRACT(attributes, '$.v') {op} {sql_literal}"
        true_ids = await members(db, f"SELECT id FROM users WHERE {condition}")
        false_ids = await members(db, f"SELECT id FROM users WHERE NOT ({condition})")
        for index, text in enumerate(JSON_VALUES):
            expected = mysql_compare(text, op, literal)
            assert outcome(f"v{index}", true_ids, false_ids) == expected, (text, op, literal)


async def test_json_in_list_matches_mysql(db):
    rows = [(f"v{i}", "{}" if t == "missing" else '{"v": ' + t + "}", AT, AT) for i, t in enumerate(JSON_VALUES)]
    async with db.transaction() as cur:
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", rows)
    condition = "JSON_EXTRACT(attributes, '$.v') IN ('pro', 7, FALSE)"
    true_ids = await members(db, f"SELECT id FROM users WHERE {condition}")
    false_ids = await members(db, f"SELECT id FROM users WHERE NOT ({condition})")
    for index, text in enumerate(JSON_VALUES):
        answers = [mysql_compare(text, "=", literal) for literal in ("pro", 7, False)]
        expected = None if None in answers else any(answers)
        assert outcome(f"v{index}", true_ids, false_ids) == expected, text


def outcome(user_id: str, true_ids: set[str], false_ids: set[str]) -> bool | None:
    """The condition's value for a user: True, False, or None for SQL NULL (in neither set)."""
    if user_id in true_ids:
        return True
    if user_id in false_ids:
        return False
    return None


async def members(db, sql: str) -> set[str]:
    statement = compose(QUERIES.list_segment, compiled(sql).query)
    return {row["id"] for row in await db.fetch_all(statement.sql, statement.args(AT, limit=1000))}

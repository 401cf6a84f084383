"""`segflowd check` for segments and `segflowd segment NAME`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from segflowd.cli import main
from segflowd.config import load_config
from segflowd.segments.check import check_segments
from segflowd.segments.cli import print_segment

T0 = datetime(2024, 6, 15, 12, 0, 0)

SEGMENTS = {
    "pro": {"sql": "SELECT id FROM users WHERE attributes->>'$.plan' = 'pro'"},
    "inactive": {
        "file": "segments/inactive.sql",
        "refresh": "5m",
    },
    "top-buyers": {
        "sql": "SELECT user_id AS id FROM (SELECT user_id, RANK() OVER (ORDER BY COUNT(*) DESC) AS r\n"
        "FROM events WHERE name = 'purchase' GROUP BY user_id) t WHERE r <= 10",
    },
}
INACTIVE_SQL = """-- No events in 30 days.
SELECT u.id FROM users u
WHERE NOT EXISTS (SELECT 1 FROM events e
                  WHERE e.user_id = u.id AND e.created_at > NOW() - INTERVAL 30 DAY)
"""


def config_with(write_config, segments: dict):
    path = write_config({"segments": segments}, files={"segments/inactive.sql": INACTIVE_SQL})
    return load_config(path, extend_sys_path=False)


async def add_user(db, user_id: str, attributes: dict, created: datetime = T0) -> None:
    await db.fetch_all(
        "INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)",
        (user_id, json.dumps(attributes), created, created),
    )


async def test_check_notes_fallbacks_and_time_dependence(write_config, db):
    config = config_with(write_config, SEGMENTS)
    errors, notes = await check_segments(config, db)
    assert errors == []
    assert len(notes) == 3
    assert notes[0] == "segments.inactive: time-dependent (NOW() at line 4, column 61): evaluated in full every 5m"
    assert notes[1].startswith("segments.top-buyers: falls back from pushdown: per-user evaluation filters the finished result")
    assert "does not PARTITION BY events.user_id" in notes[1]
    assert notes[2].startswith("segments.top-buyers: reads rows of other users (events AS events at line 2, column 6)")
    assert "evaluated in full every 1m, besides per user" in notes[2]


async def test_check_reports_every_invalid_segment(write_config, db):
    segments = {
        **SEGMENTS,
        "sleepy": {"sql": "SELECT id\nFROM users\nWHERE SLEEP(1) = 0"},
        "writer": {"sql": "UPDATE users SET attributes = '{}'"},
    }
    errors, _ = await check_segments(config_with(write_config, segments), db)
    assert errors == [
        "segments.sleepy: line 3, column 7: function SLEEP() is not allowed: it makes the server wait",
        "segments.writer: line 1, column 1: UPDATE is not allowed: it writes data; "
        "a segment is one SELECT (CTEs, subqueries and UNION are allowed)",
    ]


async def test_check_runs_valid_sql_on_the_server(write_config, db):
    segments = {
        "pro": SEGMENTS["pro"],
        # Valid MySQL 8 that this MariaDB cannot run: only the server can tell.
        "storage": {"sql": "SELECT u.id\nFROM users u\nWHERE JSON_STORAGE_SIZE(u.attributes) > 100"},
    }
    errors, _ = await check_segments(config_with(write_config, segments), db)
    assert len(errors) == 1
    assert errors[0].startswith("segments.storage: line 3, column 7: the database rejected the SQL (error 1305: FUNCTION ")
    assert "JSON_STORAGE_SIZE does not exist" in errors[0]


async def test_check_without_database_validates_only(write_config):
    segments = {**SEGMENTS, "storage": {"sql": "SELECT id FROM users WHERE JSON_STORAGE_SIZE(attributes) > 100"}}
    errors, notes = await check_segments(config_with(write_config, segments), None)
    assert errors == []
    assert len(notes) == 3


async def test_check_writes_nothing(write_config, db):
    await check_segments(config_with(write_config, SEGMENTS), db)
    for table in ("segment_members", "segment_changes", "segment_definitions"):
        assert (await db.fetch_one(f"SELECT COUNT(*) AS n FROM {table}"))["n"] == 0


async def test_print_segment_counts_and_lists(write_config, db, capsys):
    config = config_with(write_config, SEGMENTS)
    for i in range(5):
        await add_user(db, f"user{i}", {"plan": "pro" if i < 4 else "free"})
    assert await print_segment(config, db, "pro", at=T0, limit=3) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "segment pro: 4 users as of 2024-06-15 12:00:00 UTC",
        "  user0",
        "  user1",
        "  user2",
        "  ... and 1 more",
    ]


async def test_print_segment_as_of_a_time(write_config, db, capsys):
    config = config_with(write_config, SEGMENTS)
    await add_user(db, "quiet", {}, created=T0 - timedelta(days=100))
    await db.fetch_all(
        "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES ('quiet', 'x', '{}', %s, %s)",
        (T0, T0),
    )
    assert await print_segment(config, db, "inactive", at=T0 + timedelta(days=10), limit=20) == 0
    assert capsys.readouterr().out.splitlines()[0] == "segment inactive: 0 users as of 2024-06-25 12:00:00 UTC"
    assert await print_segment(config, db, "inactive", at=T0 + timedelta(days=31), limit=20) == 0
    assert capsys.readouterr().out.splitlines() == ["segment inactive: 1 user as of 2024-07-16 12:00:00 UTC", "  quiet"]


async def test_print_segment_shows_stored_membership_when_it_differs(write_config, db, capsys):
    config = config_with(write_config, SEGMENTS)
    await add_user(db, "ana", {"plan": "pro"})
    assert await print_segment(config, db, "pro", at=None, limit=20) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  ana"
    assert lines[2].startswith("stored membership: 0 users; the daemon brings it up to date")


async def test_print_unknown_segment_lists_defined_ones(write_config, db, capsys):
    config = config_with(write_config, SEGMENTS)
    assert await print_segment(config, db, "pros", at=None, limit=20) == 1
    err = capsys.readouterr().err
    assert "segment 'pros' is not defined" in err
    assert "defined segments: inactive, pro, top-buyers" in err


async def test_print_invalid_segment_shows_the_error(write_config, db, capsys):
    config = config_with(write_config, {"bad": {"sql": "SELECT id FROM users WHERE SLEEP(1)"}})
    assert await print_segment(config, db, "bad", at=None, limit=20) == 1
    assert "segments.bad: line 1, column 28: function SLEEP() is not allowed" in capsys.readouterr().err


async def test_segment_command_line(write_config, db, capsys):
    path = write_config({"segments": {"pro": SEGMENTS["pro"]}})
    await add_user(db, "ana", {"plan": "pro"})
    # The command opens its own pool on the test database, in its own event loop.
    import asyncio

    code = await asyncio.to_thread(main, ["segment", "pro", "--config", str(path), "--at", "2024-06-15T12:00:00Z"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["segment pro: 1 user as of 2024-06-15 12:00:00 UTC", "  ana"]


# Conditions on `users u` that users copy from MySQL docs; each must compile and run.
ACCEPTED_CONDITIONS = [
    "JSON_CONTAINS_PATH(u.attributes, 'one', '$.x')",
    "IFNULL(u.attributes->>'$.a', 'x') = 'x' AND NULLIF(u.id, '') IS NOT NULL",
    "FIELD(u.attributes->>'$.plan', 'pro', 'max') > 0 AND FIND_IN_SET('a', u.attributes->>'$.csv') > 0",
    "EXTRACT(YEAR_MONTH FROM u.created_at) = 202401 AND TIMESTAMPADD(MINUTE, 5, u.created_at) < NOW()",
    "STR_TO_DATE(u.attributes->>'$.d', '%d/%m/%Y') < CURDATE()",
    "FROM_UNIXTIME(CAST(u.attributes->>'$.ts' AS UNSIGNED), '%Y') = '2024'",
    "JSON_LENGTH(JSON_KEYS(u.attributes)) > 1 AND JSON_SEARCH(u.attributes, 'one', 'x') IS NOT NULL",
    "TRIM(LEADING 'x' FROM u.id) <> '' AND POSITION('a' IN u.id) > 0 AND SUBSTRING(u.id FROM 2 FOR 3) <> ''",
    "MD5(u.id) <> SHA2(u.id, 256) AND CRC32(u.id) > 0 AND HEX(u.id) <> CONV('a', 16, 10)",
    "CONVERT_TZ(u.created_at, '+00:00', '+02:00') > u.created_at",
    "u.id LIKE 'a\\\\_%' ESCAPE '\\\\' AND u.attributes->>'$.x' NOT REGEXP '^[0-9]+$'",
    "u.id SOUNDS LIKE 'robert' AND (u.created_at, u.updated_at) > ('2020-01-01', '2020-01-01')",
    "u.created_at BETWEEN DATE '2024-01-01' AND CURRENT_DATE AND u.created_at > TIMESTAMP '2024-01-01 00:00:00'",
    "JSON_VALUE(u.attributes, '$.a') = 'x' AND u.id = BINARY 'x'",
    "(SELECT COUNT(*) FROM events e WHERE e.user_id = u.id) > ALL (SELECT 1) AND u.id = ANY (SELECT e.user_id FROM events e)",
]
ACCEPTED_QUERIES = [
    """SELECT user_id AS id FROM (
         SELECT e.user_id,
                SUM(CAST(e.attributes->>'$.amount' AS DECIMAL(10, 2)))
                  OVER (PARTITION BY e.user_id ORDER BY e.created_at ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s,
                LAG(e.name) OVER (PARTITION BY e.user_id ORDER BY e.created_at) AS previous,
                FIRST_VALUE(e.name) OVER w AS first_name
         FROM events e WINDOW w AS (PARTITION BY e.user_id ORDER BY e.created_at)) t WHERE s > 100""",
    "SELECT u.id FROM users u, JSON_TABLE(u.attributes, '$.tags[*]' COLUMNS (tag VARCHAR(50) PATH '$')) AS t WHERE t.tag = 'beta'",
    "WITH RECURSIVE n AS (SELECT 1 AS i UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT u.id FROM users u JOIN n ON n.i = 1",
    "SELECT id FROM users EXCEPT SELECT user_id FROM events WHERE name = 'purchase'",
    "SELECT e.user_id AS id FROM events e GROUP BY e.user_id HAVING GROUP_CONCAT(DISTINCT e.name SEPARATOR ',') LIKE '%buy%'",
    "SELECT /*+ MAX_EXECUTION_TIME(1000) */ id FROM users",
    "SELECT 'someone' AS id FROM DUAL",
    "WITH c(uid) AS (SELECT id FROM users) SELECT c.uid AS id FROM c",
    "(SELECT id FROM users ORDER BY created_at LIMIT 1) UNION (SELECT user_id FROM events LIMIT 1)",
]


async def test_accepted_constructs_run_on_the_server(write_config, db):
    segments = {f"condition-{i}": {"sql": f"SELECT u.id FROM users u WHERE {c}"} for i, c in enumerate(ACCEPTED_CONDITIONS)}
    segments.update({f"query-{i}": {"sql": sql} for i, sql in enumerate(ACCEPTED_QUERIES)})
    errors, _ = await check_segments(config_with(write_config, segments), db)
    assert errors == []

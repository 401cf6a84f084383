"""What the parse tree shows: event triggers, pushdown and its fallbacks, reads of other users."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from segflowd.clock import FakeClock
from segflowd.config import SegmentConfig
from segflowd.segments.compiler import compile_segment
from segflowd.segments.engine import SegmentEngine


def compiled(sql: str):
    return compile_segment(SegmentConfig("s", sql, None, timedelta(minutes=1)))


@pytest.mark.parametrize(
    "sql,names",
    [
        ("SELECT id FROM users", frozenset()),
        ("SELECT user_id AS id FROM events WHERE name = 'purchase'", frozenset({"purchase"})),
        ("SELECT user_id AS id FROM events WHERE 'purchase' = name AND created_at > NOW()", frozenset({"purchase"})),
        ("SELECT user_id AS id FROM events WHERE name IN ('purchase', 'refund')", frozenset({"purchase", "refund"})),
        (
            "SELECT user_id AS id FROM events WHERE (name = 'a' AND attributes->>'$.x' = 1) OR name = 'b'",
            frozenset({"a", "b"}),
        ),
        ("SELECT user_id AS id FROM events WHERE name IN ('a', 'b') AND name = 'b'", frozenset({"b"})),
        ("SELECT user_id AS id FROM events", None),
        ("SELECT user_id AS id FROM events WHERE name LIKE 'purchase%'", None),
        ("SELECT user_id AS id FROM events WHERE name = 'a' OR created_at > NOW()", None),
        ("SELECT user_id AS id FROM events WHERE name <> 'page_view'", None),
        (
            "SELECT u.id FROM users u LEFT JOIN events e ON e.user_id = u.id AND e.name = 'signup' WHERE e.id IS NULL",
            frozenset({"signup"}),
        ),
        (
            "SELECT u.id FROM users u WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id AND e.name = 'purchase')",
            frozenset({"purchase"}),
        ),
        (
            """SELECT user_id AS id FROM events WHERE name = 'purchase'
               UNION SELECT user_id FROM events WHERE name IN ('refund', 'chargeback')""",
            frozenset({"purchase", "refund", "chargeback"}),
        ),
        # The name filter is outside the SELECT that reads events: any new event can become the latest.
        (
            """SELECT id FROM (SELECT user_id AS id, name, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY created_at DESC) AS rn
               FROM events) AS t WHERE rn = 1 AND name = 'cart_abandoned'""",
            None,
        ),
    ],
)
def test_event_names_from_the_parse_tree(sql, names):
    assert compiled(sql).event_names == names


def test_engine_selects_segments_by_event_name():
    config = SimpleNamespace(
        segments={
            name: SegmentConfig(name, sql, None, timedelta(minutes=1))
            for name, sql in {
                "users-only": "SELECT id FROM users WHERE attributes->>'$.plan' = 'pro'",
                "buyers": "SELECT user_id AS id FROM events WHERE name = 'purchase'",
                "money": "SELECT user_id AS id FROM events WHERE name IN ('purchase', 'refund')",
                "active": "SELECT user_id AS id FROM events WHERE created_at > NOW() - INTERVAL 1 DAY",
            }.items()
        }
    )
    engine = SegmentEngine(config, None, FakeClock(datetime(2024, 6, 15)))
    assert engine.triggered_segments("purchase") == ("active", "buyers", "money")
    assert engine.triggered_segments("refund") == ("active", "money")
    assert engine.triggered_segments("page_view") == ("active",)
    assert engine.triggered_segments(None) == ("active", "buyers", "money", "users-only")


@pytest.mark.parametrize(
    "sql,reason",
    [
        ("SELECT id FROM users ORDER BY created_at LIMIT 10", "LIMIT keeps a number of rows of all users"),
        ("SELECT CONCAT('u', id) AS id FROM users", "the output id is computed"),
        ("SELECT e.id AS id FROM events e", "the output id is events.id, not the user id column events.user_id"),
        (
            "SELECT user_id AS id FROM (SELECT user_id, RANK() OVER (ORDER BY created_at) AS r FROM events) t WHERE r = 1",
            "a window function does not PARTITION BY",
        ),
        ("SELECT MIN(user_id) AS id FROM events HAVING COUNT(*) > 3", "the output id is computed"),
        (
            "SELECT t.user_id AS id FROM (SELECT user_id, name FROM events GROUP BY name, user_id) t",
            None,
        ),
        (
            "SELECT t.uid AS id FROM (SELECT e.user_id AS uid FROM events e GROUP BY e.name) t",
            "GROUP BY does not include",
        ),
        (
            "WITH b AS (SELECT user_id FROM events) SELECT b.user_id AS id FROM b WHERE b.user_id IN (SELECT user_id FROM b)",
            "referenced more than once",
        ),
        ("SELECT id FROM users UNION SELECT user_id FROM events LIMIT 5", "LIMIT on a UNION"),
    ],
)
def test_pushdown_fallback_reasons(sql, reason):
    segment = compiled(sql)
    if reason is None:
        assert segment.pushdown.complete, segment.pushdown.reasons
    else:
        assert not segment.pushdown.complete
        assert any(reason in r for r in segment.pushdown.reasons), segment.pushdown.reasons


def test_pushdown_goes_into_each_union_branch_and_cte():
    segment = compiled(
        """WITH buyers AS (SELECT user_id FROM events WHERE name = 'purchase')
           SELECT b.user_id AS id FROM buyers b
           UNION ALL SELECT u.id FROM users u WHERE u.attributes->>'$.vip' = 'true'"""
    )
    assert segment.pushdown.complete
    assert segment.per_user.sql.count("= %s") == 2
    assert "events.name = 'purchase' AND events.user_id = %s" in segment.per_user.sql


def test_pushdown_into_joined_derived_table_and_in_subquery():
    segment = compiled(
        """SELECT u.id FROM users u
           JOIN (SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id) c ON c.user_id = u.id
           WHERE u.id IN (SELECT user_id FROM events WHERE name = 'purchase' GROUP BY user_id HAVING COUNT(*) > 1)"""
    )
    assert segment.pushdown.complete
    # The user filter itself, the derived table joined on the id, and the IN subquery.
    assert segment.per_user.sql.count("= %s") == 3


def test_left_join_pushes_into_the_joined_table():
    segment = compiled(
        """SELECT u.id FROM users u
           LEFT JOIN (SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id) c ON c.user_id = u.id
           WHERE COALESCE(c.n, 0) = 0"""
    )
    assert segment.pushdown.complete
    assert segment.per_user.sql.count("= %s") == 2
    assert not segment.other_users


@pytest.mark.parametrize(
    "sql,table",
    [
        ("SELECT id FROM users WHERE created_at > (SELECT MAX(created_at) FROM events)", "events"),
        (
            "SELECT u.id FROM users u WHERE u.attributes->>'$.referrer' IN (SELECT user_id FROM events WHERE name = 'purchase')",
            "events",
        ),
        ("SELECT u.id FROM users u JOIN users r ON r.id = u.attributes->>'$.referrer' WHERE r.created_at > u.created_at", "users"),
    ],
)
def test_reads_of_other_users_are_found(sql, table):
    segment = compiled(sql)
    assert [located.label.split(" ")[0] for located in segment.other_users] == [table]
    assert segment.refreshed


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT u.id FROM users u JOIN events e ON e.user_id = u.id WHERE e.name = 'x'",
        "SELECT u.id FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id)",
        "SELECT u.id FROM users u WHERE u.id NOT IN (SELECT user_id FROM events WHERE name = 'purchase')",
        "SELECT e.user_id AS id FROM events e JOIN users u ON u.id = e.user_id WHERE u.attributes->>'$.plan' = 'pro'",
        "SELECT u.id FROM users u WHERE (SELECT COUNT(*) FROM events e WHERE e.user_id = u.id) > 2",
    ],
)
def test_reads_tied_to_the_user(sql):
    segment = compiled(sql)
    assert segment.other_users == ()
    assert not segment.refreshed

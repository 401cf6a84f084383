"""The segment corpus: realistic MySQL segment queries, run on the real server.

Each query is evaluated in full (in batches) and per user against the same
fixture data, and both must give the members written out here. Where the
result depends on MySQL's JSON comparison rules (which MariaDB does not
follow on its own), a comment gives the rule. Other test modules import
CORPUS and the fixture loader from here.
"""

from __future__ import annotations

import calendar
import json
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from segflowd.clock import FakeClock
from segflowd.config import SegmentConfig
from segflowd.queries import QUERIES
from segflowd.segments.engine import SegmentEngine
from segflowd.segments.params import compose

NOW = datetime(2024, 6, 15, 12, 0, 0)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def epoch(when: datetime) -> int:
    return calendar.timegm(when.timetuple())


USERS: dict[str, tuple[dict[str, Any], datetime]] = {
    "ana": (
        {
            "plan": "pro",
            "email": "ana@acme.com",
            "country": "DE",
            "age": 34,
            "tags": ["beta", "vip"],
            "newsletter": True,
            "phone": "+4915112345",
            "locale": "de",
            "birthday": "1990-06-15",
            "trial_ends": epoch(NOW + timedelta(days=2)),
        },
        datetime(2024, 6, 10, 9, 0),
    ),
    "ben": (
        {"plan": "free", "email": "ben@example.org", "country": "US", "age": "thirty", "newsletter": False, "tags": ["alpha"]},
        datetime(2024, 1, 1, 0, 0),
    ),
    "cara": (
        {"plan": "max", "email": "cara@ACME.com", "country": "FR", "age": 29, "vip": True, "referred_by": "ana", "locale": None},
        datetime(2024, 3, 1, 8, 0),
    ),
    "dev": (
        {"plan": "PRO", "country": "IT", "age": 45.5, "tags": [], "newsletter": 1, "phone": "+4930123"},
        datetime(2024, 4, 20, 0, 0),
    ),
    "eve": ({}, datetime(2024, 6, 14, 10, 0)),
    "finn": (
        {"plan": None, "email": "finn@acme.com", "age": 30, "birthday": "1985-06-15", "referred_by": "ben", "first name": "Finn"},
        datetime(2023, 11, 1, 0, 0),
    ),
    "gus": (
        {"plan": "pro", "country": "DE", "age": 18, "tags": ["beta"], "vip": "true", "trial_ends": epoch(NOW + timedelta(days=10))},
        datetime(2024, 5, 20, 0, 0),
    ),
    "hana": ({"plan": 5, "country": "US", "newsletter": "yes", "email": "hana@acme.com.evil.org"}, datetime(2024, 2, 14, 0, 0)),
}

EVENTS: list[tuple[str, str, dict[str, Any], datetime]] = [
    ("ana", "purchase", {"amount": 600, "currency": "EUR"}, days_ago(2)),
    ("ana", "purchase", {"amount": 500, "currency": "EUR"}, days_ago(10)),
    ("ana", "page_view", {"path": "/"}, days_ago(1)),
    ("ana", "page_view", {"path": "/pricing"}, days_ago(1.01)),
    ("ana", "page_view", {"path": "/docs"}, days_ago(3)),
    ("ana", "signup", {}, days_ago(5)),
    ("ben", "purchase", {"amount": 50, "currency": "USD"}, days_ago(70)),
    ("ben", "page_view", {"path": "/"}, days_ago(45)),
    ("ben", "cart_abandoned", {"items": 2}, days_ago(40)),
    ("cara", "purchase", {"amount": 1200, "currency": "EUR", "items": [{"sku": "A1"}, {"sku": "B7"}]}, days_ago(20)),
    ("cara", "refund", {"amount": 100, "currency": "EUR"}, days_ago(15)),
    ("cara", "page_view", {"path": "/"}, days_ago(5)),
    ("cara", "page_view", {"path": "/cart"}, days_ago(5.01)),
    ("cara", "cart_abandoned", {"items": 1}, days_ago(1)),
    ("dev", "signup", {}, days_ago(50)),
    ("dev", "page_view", {"path": "/"}, days_ago(49)),
    ("eve", "signup", {}, days_ago(1)),
    ("finn", "purchase", {"amount": 20, "currency": "EUR"}, days_ago(100)),
    ("finn", "purchase", {"amount": 30, "currency": "EUR"}, days_ago(95)),
    ("gus", "page_view", {"path": "/"}, days_ago(2)),
    ("gus", "page_view", {"path": "/a"}, days_ago(3)),
    ("gus", "page_view", {"path": "/b"}, days_ago(4)),
    ("gus", "page_view", {"path": "/c"}, days_ago(5)),
    ("gus", "cart_abandoned", {"items": 3}, days_ago(6)),
    ("gus", "purchase", {"amount": 999.5, "currency": "USD"}, days_ago(1)),
]

# (name, SQL as a user writes it, expected members as of NOW)
CORPUS: list[tuple[str, str, set[str]]] = [
    ("pro-plan", "SELECT id FROM users WHERE attributes->>'$.plan' = 'pro'", {"ana", "gus"}),
    # MariaDB alone matches no user here, because it compares the JSON text "pro", quotes included.
    ("paid-plans", "SELECT u.id FROM users u WHERE JSON_EXTRACT(u.attributes, '$.plan') IN ('pro', 'max')", {"ana", "cara", "gus"}),
    (
        "big-spenders",
        """SELECT u.id FROM users u JOIN events e ON e.user_id = u.id
           WHERE e.name = 'purchase'
           GROUP BY u.id HAVING SUM(e.attributes->>'$.amount') > 1000""",
        {"ana", "cara"},
    ),
    ("recent-signups", "SELECT id FROM users WHERE created_at >= NOW() - INTERVAL 7 DAY", {"ana", "eve"}),
    (
        "inactive-30d",
        """SELECT u.id FROM users u
           WHERE NOT EXISTS (
             SELECT 1 FROM events e
             WHERE e.user_id = u.id AND e.created_at > DATE_SUB(NOW(), INTERVAL 30 DAY))""",
        {"ben", "dev", "finn", "hana"},
    ),
    (
        "purchasers",
        "SELECT u.id FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id AND e.name = 'purchase')",
        {"ana", "ben", "cara", "finn", "gus"},
    ),
    (
        "repeat-buyers",
        """WITH purchases AS (
             SELECT user_id, COUNT(*) AS n FROM events WHERE name = 'purchase' GROUP BY user_id)
           SELECT p.user_id AS id FROM purchases p WHERE p.n >= 2""",
        {"ana", "finn"},
    ),
    (
        "eu-users",
        """SELECT id FROM users
           WHERE CASE WHEN attributes->>'$.country' IN ('DE', 'FR', 'IT') THEN 'eu' ELSE 'other' END = 'eu'""",
        {"ana", "cara", "dev", "gus"},
    ),
    # A JSON null unquotes to the string 'null', which COALESCE keeps.
    (
        "english-locale",
        "SELECT id FROM users WHERE COALESCE(attributes->>'$.locale', 'en') = 'en'",
        {"ben", "dev", "eve", "finn", "gus", "hana"},
    ),
    # ->> returns utf8mb4_bin text, so LIKE is case-sensitive: cara@ACME.com does not match.
    ("acme-emails", "SELECT id FROM users WHERE attributes->>'$.email' LIKE '%@acme.com'", {"ana", "finn"}),
    ("german-phones", "SELECT id FROM users WHERE attributes->>'$.phone' REGEXP '^\\\\+49'", {"ana", "dev"}),
    ("max-plan", "SELECT `u`.`id` FROM `users` AS `u` WHERE `u`.`attributes`->>'$.plan' = 'max'", {"cara"}),
    (
        "cart-or-vip",
        """SELECT user_id AS id FROM events WHERE name = 'cart_abandoned'
           UNION
           SELECT id FROM users WHERE attributes->>'$.vip' = 'true'""",
        {"ben", "cara", "gus"},
    ),
    (
        "last-event-cart",
        """SELECT id FROM (
             SELECT e.user_id AS id, e.name,
                    ROW_NUMBER() OVER (PARTITION BY e.user_id ORDER BY e.created_at DESC) AS rn
             FROM events e) AS last_event
           WHERE rn = 1 AND name = 'cart_abandoned'""",
        {"ben", "cara"},
    ),
    (
        "top-spenders",
        """SELECT user_id AS id FROM (
             SELECT user_id, RANK() OVER (ORDER BY SUM(attributes->>'$.amount') DESC) AS spend_rank
             FROM events WHERE name = 'purchase' GROUP BY user_id) AS ranked
           WHERE spend_rank <= 2""",
        {"ana", "cara"},
    ),
    ("beta-testers", "SELECT id FROM users WHERE JSON_CONTAINS(attributes, '\"beta\"', '$.tags')", {"ana", "gus"}),
    ("vip-tag", "SELECT id FROM users WHERE 'vip' MEMBER OF (attributes->'$.tags')", {"ana"}),
    # MySQL orders a JSON string above every number, so ben's "thirty" is >= 30.
    ("thirty-plus", "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.age') >= 30", {"ana", "ben", "dev", "finn"}),
    # TRUE becomes a JSON boolean: dev's 1 and hana's "yes" are other JSON types, so not equal.
    ("newsletter", "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.newsletter') = TRUE", {"ana"}),
    (
        "signed-up-30-to-180-days",
        "SELECT u.id FROM users u WHERE TIMESTAMPDIFF(DAY, u.created_at, NOW()) BETWEEN 30 AND 180",
        {"ben", "cara", "dev", "hana"},
    ),
    (
        "birthday-today",
        "SELECT id FROM users WHERE DATE_FORMAT(attributes->>'$.birthday', '%m-%d') = DATE_FORMAT(CURDATE(), '%m-%d')",
        {"ana", "finn"},
    ),
    (
        "engaged-this-week",
        """SELECT e.user_id AS id FROM events e
           WHERE e.created_at >= NOW() - INTERVAL 7 DAY
           GROUP BY e.user_id HAVING COUNT(DISTINCT e.name) >= 2""",
        {"ana", "cara", "gus"},
    ),
    (
        "never-purchased",
        """SELECT u.id FROM users u
           LEFT JOIN events e ON e.user_id = u.id AND e.name = 'purchase'
           WHERE e.id IS NULL""",
        {"dev", "eve", "hana"},
    ),
    (
        "frequent-viewers",
        """SELECT u.id FROM users u
           WHERE u.id IN (SELECT user_id FROM events WHERE name = 'page_view'
                          GROUP BY user_id HAVING COUNT(*) >= 3)""",
        {"ana", "gus"},
    ),
    (
        "lapsed-buyers",
        """SELECT u.id FROM users u
           JOIN (SELECT user_id, MAX(created_at) AS last_purchase
                 FROM events WHERE name = 'purchase' GROUP BY user_id) AS p ON p.user_id = u.id
           WHERE p.last_purchase < NOW() - INTERVAL 60 DAY""",
        {"ben", "finn"},
    ),
    (
        "trial-ending",
        """SELECT id FROM users
           WHERE CAST(attributes->>'$.trial_ends' AS UNSIGNED)
                 BETWEEN UNIX_TIMESTAMP() AND UNIX_TIMESTAMP() + 3 * 86400""",
        {"ana"},
    ),
    (
        "eur-buyers",
        """SELECT DISTINCT e.user_id AS id FROM events e
           WHERE e.name IN ('purchase', 'refund') AND JSON_EXTRACT(e.attributes, '$.currency') = 'EUR'""",
        {"ana", "cara", "finn"},
    ),
    ("bought-sku-a1", "SELECT e.user_id AS id FROM events e WHERE e.attributes->'$.items[0].sku' = 'A1'", {"cara"}),
    (
        "referred-by-buyer",
        """SELECT u.id FROM users u
           WHERE u.attributes->>'$.referred_by' IN (SELECT user_id FROM events WHERE name = 'purchase')""",
        {"cara", "finn"},
    ),
    ("free-plan-star", "SELECT * FROM users WHERE attributes->>'$.plan' = 'free'", {"ben"}),
    (
        "utc-keywords",
        """SELECT id FROM users
           WHERE created_at < UTC_TIMESTAMP - INTERVAL 180 DAY
              OR DATE(created_at) = CURRENT_DATE - INTERVAL 1 DAY""",
        {"eve", "finn"},
    ),
    # A JSON null is not SQL NULL, and unquotes to 'null'.
    (
        "free-or-no-plan",
        """SELECT id FROM users
           WHERE IF(JSON_EXTRACT(attributes, "$.plan") IS NULL, "free", attributes->>"$.plan") = "free\"""",
        {"ben", "eve"},
    ),
    ("numeric-plan", "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.plan') IN (5, 6)", {"hana"}),
    # JSON values of another type than the string are never equal to it, so <> is true for them.
    (
        "not-pro",
        "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.plan') <> 'pro'",
        {"ben", "cara", "dev", "finn", "hana"},
    ),
    ("acme-any-case", "SELECT id FROM users WHERE LOWER(attributes->>'$.email') LIKE '%@acme.com'", {"ana", "cara", "finn"}),
    (
        "acme-regexp-i",
        "SELECT id FROM users WHERE REGEXP_LIKE(attributes->>'$.email', '@acme\\\\.com$', 'i')",
        {"ana", "cara", "finn"},
    ),
    (
        "german-active",
        """SELECT e.user_id AS id, ANY_VALUE(u.attributes->>'$.country') AS country
           FROM events e JOIN users u ON u.id = e.user_id
           GROUP BY e.user_id HAVING country = 'DE'""",
        {"ana", "gus"},
    ),
    # As a condition, a JSON value is true for JSON true and non-zero numbers; gus's "true" is a string.
    ("vip-flag", "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.vip')", {"cara"}),
    (
        "first-name-quoted-path",
        "SELECT id FROM users WHERE attributes->>'$.\"first name\"' = 'Finn'",
        {"finn"},
    ),
]

# Corpus queries whose membership depends on other users' rows.
READS_OTHER_USERS = {"top-spenders", "referred-by-buyer"}


async def load_fixture(db: Any, users: dict | None = None, events: list | None = None) -> None:
    """Insert the corpus users and events (or the given ones) with bulk INSERTs."""
    users = USERS if users is None else users
    events = EVENTS if events is None else events
    async with db.transaction() as cur:
        if users:
            rows = [(user_id, json.dumps(attributes), created, created) for user_id, (attributes, created) in users.items()]
            await cur.executemany(
                "INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", rows
            )
        if events:
            rows = [(user_id, name, json.dumps(attributes), created, created) for user_id, name, attributes, created in events]
            await cur.executemany(
                "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )


def corpus_config(names: list[str] | None = None, refresh: timedelta = timedelta(minutes=1)) -> SimpleNamespace:
    """A config holding the corpus segments (all, or the named ones)."""
    chosen = [(name, sql) for name, sql, _ in CORPUS if names is None or name in names]
    return SimpleNamespace(segments={name: SegmentConfig(name, sql, None, refresh) for name, sql in chosen})


async def full_members(db: Any, engine: SegmentEngine, name: str, now: datetime) -> set[str]:
    """The segment's members computed by its SQL alone (no pushdown), as of `now`."""
    statement = compose(QUERIES.list_segment, engine.segments[name].query)
    rows = await db.fetch_all(statement.sql, statement.args(now, limit=1_000_000))
    return {row["id"] for row in rows}


async def per_user_members(db: Any, engine: SegmentEngine, user_ids: list[str], now: datetime) -> dict[str, set[str]]:
    """Each segment's members found by per-user evaluation of every user."""
    statement = engine._user_statement(engine.triggered_segments())
    found: dict[str, set[str]] = {name: set() for name in engine.segments}
    for user_id in user_ids:
        rows = await db.fetch_all(statement.sql, statement.args(now, user_id=user_id))
        for row in rows:
            if row["matched"] == 1:
                found[row["segment"]].add(user_id)
    return found


def test_corpus_size():
    assert len(CORPUS) >= 25
    assert len({name for name, _, _ in CORPUS}) == len(CORPUS)


@pytest.fixture
async def corpus_engine(db):
    await load_fixture(db)
    return SegmentEngine(corpus_config(), db, FakeClock(NOW), batch_size=3)


@pytest.mark.parametrize("name,sql,expected", CORPUS, ids=[c[0] for c in CORPUS])
async def test_corpus_full_evaluation(corpus_engine, db, name, sql, expected):
    result = await corpus_engine.refresh_segment(name)
    rows = await db.fetch_all("SELECT user_id FROM segment_members WHERE segment = %s", (name,))
    assert {row["user_id"] for row in rows} == expected
    assert result.entered == len(expected)
    assert result.batches == 3  # 8 users in batches of 3


async def test_corpus_per_user_evaluation(corpus_engine, db):
    found = await per_user_members(db, corpus_engine, sorted(USERS), NOW)
    for name, _, expected in CORPUS:
        assert found[name] == expected, name


async def test_corpus_evaluate_user_stores_members(corpus_engine, db):
    for user_id in sorted(USERS):
        async with db.transaction() as cur:
            await corpus_engine.evaluate_user(cur, user_id)
    rows = await db.fetch_all("SELECT segment, user_id FROM segment_members")
    stored: dict[str, set[str]] = {}
    for row in rows:
        stored.setdefault(row["segment"], set()).add(row["user_id"])
    for name, _, expected in CORPUS:
        assert stored.get(name, set()) == expected, name


def test_corpus_pushdown_and_other_users(corpus_engine):
    for name, _, _ in CORPUS:
        segment = corpus_engine.segments[name]
        if name in READS_OTHER_USERS:
            assert segment.other_users, name
        else:
            assert segment.pushdown.complete, (name, segment.pushdown.reasons)
            assert not segment.other_users, (name, segment.other_users)


# --- EXPLAIN: pushed-down per-user queries use the user id indexes ------------------

# The indexes that start with the user id, by table.
USER_ID_INDEXES = {"users": {"PRIMARY"}, "events": {"events_user_name_time"}}


async def load_volume(db: Any, users: int, events_per_user: int) -> None:
    """Enough rows that the optimizer prefers indexes to scans, as on a real install."""
    names = ["page_view", "purchase", "signup", "cart_abandoned", "refund"]
    async with db.transaction() as cur:
        user_rows = [
            (f"user{i:05d}", json.dumps({"plan": ["free", "pro", "max"][i % 3], "age": i % 80}), days_ago(i % 400), NOW)
            for i in range(users)
        ]
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", user_rows)
        event_rows = [
            (f"user{i:05d}", names[(i + j) % len(names)], json.dumps({"amount": j * 10, "currency": "EUR"}), days_ago(j), NOW)
            for i in range(users)
            for j in range(events_per_user)
        ]
        await cur.executemany(
            "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES (%s, %s, %s, %s, %s)",
            event_rows,
        )
        await cur.execute("ANALYZE TABLE users, events")
        await cur.fetchall()


def table_aliases(sql: str) -> dict[str, str]:
    """Alias -> base table for every users/events reference in generated SQL."""
    tree = sqlglot.parse_one(sql.replace("%s", "'x'"), read="mysql")
    return {t.alias_or_name: t.name for t in tree.find_all(exp.Table) if t.name in USER_ID_INDEXES}


# MariaDB reads a table found by a primary key lookup while optimizing
# ("const" tables), and then reports the plan with one of these notes.
CONST_TABLE_NOTES = {"Impossible WHERE noticed after reading const tables", "const row not found"}


async def test_explain_per_user_uses_user_id_index(db):
    await load_volume(db, users=2000, events_per_user=10)
    pushed = [name for name, _, _ in CORPUS if name not in READS_OTHER_USERS]
    engine = SegmentEngine(corpus_config(pushed), db, FakeClock(NOW))
    for name in pushed:
        branch = engine._branches[name]
        aliases = table_aliases(engine.segments[name].per_user.sql)
        rows = await db.fetch_all("EXPLAIN " + branch.sql, branch.args(NOW, user_id="user00042"))
        table_rows = [row for row in rows if row["table"] in aliases]
        for row in table_rows:
            assert row["type"] not in ("ALL", "index"), (name, row)
            assert row["key"] in USER_ID_INDEXES[aliases[row["table"]]], (name, row)
        const_only = any(row["Extra"] in CONST_TABLE_NOTES for row in rows)
        assert table_rows or const_only, (name, rows)


async def test_explain_check_detects_scans(db):
    """The check above can fail: ranking all buyers reads every purchase."""
    await load_volume(db, users=2000, events_per_user=10)
    engine = SegmentEngine(corpus_config(["top-spenders"]), db, FakeClock(NOW))
    branch = engine._branches["top-spenders"]
    rows = await db.fetch_all("EXPLAIN " + branch.sql, branch.args(NOW, user_id="user00042"))
    events = [row for row in rows if row["table"] == "events"]
    assert events
    assert any(row["type"] in ("ALL", "index") or row["key"] not in USER_ID_INDEXES["events"] for row in events)

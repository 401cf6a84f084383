"""SegmentEngine on the real server: stored membership, records, listeners, refreshes."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from segflowd.clock import FakeClock
from segflowd.config import SegmentConfig
from segflowd.model import MembershipChanges
from segflowd.segments.engine import SegmentEngine
from segflowd.segments.membership import ConcurrentChange, apply_segment_changes
from segflowd.segments.refresh import segment_lock

T0 = datetime(2024, 6, 15, 12, 0, 0)

SEGMENTS = {
    "pro": "SELECT id FROM users WHERE attributes->>'$.plan' = 'pro'",
    "buyers": "SELECT user_id AS id FROM events WHERE name = 'purchase'",
    "recent": "SELECT id FROM users WHERE created_at >= NOW() - INTERVAL 7 DAY",
}


def config_of(segments: dict[str, str], refresh: timedelta = timedelta(minutes=1)) -> SimpleNamespace:
    return SimpleNamespace(segments={name: SegmentConfig(name, sql, None, refresh) for name, sql in segments.items()})


async def add_user(db, user_id: str, attributes: dict | None = None, created: datetime = T0) -> None:
    await db.fetch_all(
        "INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)",
        (user_id, json.dumps(attributes or {}), created, created),
    )


async def add_event(db, user_id: str, name: str, created: datetime = T0) -> None:
    await db.fetch_all(
        "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES (%s, %s, '{}', %s, %s)",
        (user_id, name, created, created),
    )


async def set_plan(db, user_id: str, plan: str) -> None:
    await db.fetch_all(
        "UPDATE users SET attributes = JSON_SET(attributes, '$.plan', %s) WHERE id = %s", (plan, user_id)
    )


async def members(db, segment: str) -> set[str]:
    rows = await db.fetch_all("SELECT user_id FROM segment_members WHERE segment = %s", (segment,))
    return {row["user_id"] for row in rows}


async def changes(db) -> list[tuple[str, str, str, datetime]]:
    rows = await db.fetch_all("SELECT segment, user_id, change_kind, changed_at FROM segment_changes ORDER BY id")
    return [(r["segment"], r["user_id"], r["change_kind"], r["changed_at"]) for r in rows]


async def evaluate(engine: SegmentEngine, db, user_id: str, event_name: str | None = None) -> MembershipChanges:
    async with db.transaction() as cur:
        return await engine.evaluate_user(cur, user_id, event_name=event_name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def engine(db, clock) -> SegmentEngine:
    return SegmentEngine(config_of(SEGMENTS), db, clock, batch_size=2)


async def test_evaluate_user_enters_and_exits_with_records(engine, db, clock):
    await add_user(db, "ana", {"plan": "pro"}, created=T0 - timedelta(days=30))
    assert await evaluate(engine, db, "ana") == MembershipChanges(entered=["pro"])
    rows = await db.fetch_all("SELECT segment, entered_at FROM segment_members WHERE user_id = 'ana'")
    assert rows == [{"segment": "pro", "entered_at": T0}]

    clock.advance(hours=1)
    assert await evaluate(engine, db, "ana") == MembershipChanges()
    await set_plan(db, "ana", "free")
    assert await evaluate(engine, db, "ana") == MembershipChanges(left=["pro"])
    assert await members(db, "pro") == set()
    assert await changes(db) == [("pro", "ana", "enter", T0), ("pro", "ana", "exit", T0 + timedelta(hours=1))]


async def test_event_name_evaluates_only_triggered_segments(engine, db):
    await add_user(db, "ana", {"plan": "pro"}, created=T0 - timedelta(days=30))
    await add_event(db, "ana", "purchase")
    assert await evaluate(engine, db, "ana", event_name="page_view") == MembershipChanges()
    assert await evaluate(engine, db, "ana", event_name="purchase") == MembershipChanges(entered=["buyers"])
    assert await members(db, "pro") == set()
    assert await evaluate(engine, db, "ana") == MembershipChanges(entered=["pro"])


async def test_unknown_user_leaves_every_segment(engine, db):
    await add_user(db, "ana", {"plan": "pro"})
    await evaluate(engine, db, "ana")
    await db.fetch_all("DELETE FROM users WHERE id = 'ana'")
    assert await evaluate(engine, db, "ana") == MembershipChanges(left=["pro", "recent"])


async def test_listeners_run_in_the_changing_transaction(engine, db):
    calls = []

    async def listener(cur, user_id, changed, now):
        await cur.execute("SELECT COUNT(*) AS n FROM segment_members WHERE user_id = %s", (user_id,))
        seen_inside = (await cur.fetchone())["n"]
        seen_outside = (await db.fetch_one("SELECT COUNT(*) AS n FROM segment_members WHERE user_id = %s", (user_id,)))["n"]
        calls.append((user_id, changed, now, seen_inside, seen_outside))

    engine.listeners.append(listener)
    await add_user(db, "ana", {"plan": "pro"})
    await evaluate(engine, db, "ana")
    assert calls == [("ana", MembershipChanges(entered=["pro", "recent"]), T0, 2, 0)]


async def test_failing_listener_rolls_back_the_change(engine, db):
    async def listener(cur, user_id, changed, now):
        raise RuntimeError("enrollment failed")

    engine.listeners.append(listener)
    await add_user(db, "ana", {"plan": "pro"})
    with pytest.raises(RuntimeError):
        await evaluate(engine, db, "ana")
    assert await members(db, "pro") == set()
    assert await changes(db) == []


async def test_same_sql_at_two_times_gives_different_members(engine, db, clock):
    await add_user(db, "new", created=T0 - timedelta(days=3))
    assert await evaluate(engine, db, "new") == MembershipChanges(entered=["recent"])
    clock.advance(days=5)
    assert await evaluate(engine, db, "new") == MembershipChanges(left=["recent"])

    await engine.refresh_segment("recent", now=T0)
    assert await members(db, "recent") == {"new"}
    await engine.refresh_segment("recent", now=T0 + timedelta(days=5))
    assert await members(db, "recent") == set()


async def test_full_refresh_runs_in_batches(db, clock):
    engine = SegmentEngine(config_of({"pro": SEGMENTS["pro"]}), db, clock, batch_size=2)
    calls = []

    async def listener(cur, user_id, changed, now):
        calls.append((user_id, changed))

    engine.listeners.append(listener)
    for i in range(7):
        await add_user(db, f"u{i}", {"plan": "pro" if i % 2 == 0 else "free"})
    # A stored member that is no longer a user at all.
    await db.fetch_all("INSERT INTO segment_members VALUES ('pro', 'zz-deleted', %s)", (T0,))

    result = await engine.refresh_segment("pro")
    assert (result.entered, result.left, result.batches) == (4, 1, 4)
    assert await members(db, "pro") == {"u0", "u2", "u4", "u6"}
    assert sorted(calls) == sorted(
        [(f"u{i}", MembershipChanges(entered=["pro"])) for i in (0, 2, 4, 6)]
        + [("zz-deleted", MembershipChanges(left=["pro"]))]
    )

    await set_plan(db, "u0", "free")
    await set_plan(db, "u1", "pro")
    result = await engine.refresh_segment("pro")
    assert (result.entered, result.left) == (1, 1)
    assert await members(db, "pro") == {"u1", "u2", "u4", "u6"}
    assert (await engine.refresh_segment("pro")).entered == 0


async def test_batch_conflict_goes_row_by_row(db):
    await db.fetch_all("INSERT INTO segment_members VALUES ('pro', 'b', %s)", (T0,))
    async with db.transaction() as cur:
        with pytest.raises(ConcurrentChange):
            await apply_segment_changes(cur, "pro", ["a", "b"], [], T0, [], row_by_row=False)
        await cur.execute("ROLLBACK")
    async with db.transaction() as cur:
        entered, left = await apply_segment_changes(cur, "pro", ["a", "b"], ["gone"], T0, [], row_by_row=True)
    assert (entered, left) == (["a"], [])
    assert await changes(db) == [("pro", "a", "enter", T0)]


async def test_start_evaluates_new_and_changed_sql_only(db, clock):
    await add_user(db, "ana", {"plan": "pro"})
    await add_event(db, "ana", "purchase")

    first = SegmentEngine(config_of({"pro": SEGMENTS["pro"], "buyers": SEGMENTS["buyers"]}), db, clock)
    results = await first.sync_definitions()
    assert sorted(r.segment for r in results) == ["buyers", "pro"]
    stored = {r["name"]: r["sql_hash"] for r in await db.fetch_all("SELECT name, sql_hash FROM segment_definitions")}
    assert stored == {"pro": first.segments["pro"].sql_hash, "buyers": first.segments["buyers"].sql_hash}

    same = SegmentEngine(config_of({"pro": SEGMENTS["pro"], "buyers": SEGMENTS["buyers"]}), db, clock)
    assert await same.sync_definitions() == []

    changed_sql = "SELECT id FROM users WHERE attributes->>'$.plan' IN ('pro', 'max')"
    changed = SegmentEngine(config_of({"pro": changed_sql, "buyers": SEGMENTS["buyers"]}), db, clock)
    assert [r.segment for r in await changed.sync_definitions()] == ["pro"]

    removed = SegmentEngine(config_of({"pro": changed_sql}), db, clock)
    assert await removed.sync_definitions() == []
    assert await members(db, "buyers") == set()
    assert [r["name"] for r in await db.fetch_all("SELECT name FROM segment_definitions")] == ["pro"]


async def test_segments_of_lists_configured_segments(engine, db):
    await add_user(db, "ana", {"plan": "pro"})
    await evaluate(engine, db, "ana")
    await db.fetch_all("INSERT INTO segment_members VALUES ('old-segment', 'ana', %s)", (T0,))
    async with db.transaction() as cur:
        assert await engine.segments_of(cur, "ana") == ["pro", "recent"]


async def test_refresh_if_due_follows_the_interval(db, clock):
    engine = SegmentEngine(config_of({"recent": SEGMENTS["recent"]}, refresh=timedelta(minutes=5)), db, clock)
    await add_user(db, "ana", created=T0 - timedelta(days=6))
    assert (await engine.refresh_if_due("recent")).entered == 1
    clock.advance(minutes=4)
    assert await engine.refresh_if_due("recent") is None
    clock.advance(days=1)
    assert (await engine.refresh_if_due("recent")).left == 1


async def test_refresh_skips_locked_segment(db, clock):
    engine = SegmentEngine(config_of({"recent": SEGMENTS["recent"]}), db, clock)
    async with segment_lock(db, "recent", 0) as acquired:
        assert acquired
        assert await engine.refresh_if_due("recent") is None
    assert await engine.refresh_if_due("recent") is not None


async def test_concurrent_refreshes_evaluate_once(db, clock):
    for i in range(20):
        await add_user(db, f"u{i:02d}", created=T0 - timedelta(days=1))
    config = config_of({"recent": SEGMENTS["recent"]})
    engines = [SegmentEngine(config, db, clock, batch_size=3) for _ in range(3)]
    results = await asyncio.gather(*(e.refresh_if_due("recent") for e in engines))
    done = [r for r in results if r is not None]
    assert len(done) == 1
    assert done[0].entered == 20
    assert len(await changes(db)) == 20


async def test_background_refresher_follows_the_clock(db, clock):
    engine = SegmentEngine(config_of({"recent": SEGMENTS["recent"]}, refresh=timedelta(milliseconds=200)), db, clock)
    await add_user(db, "ana", created=T0 - timedelta(days=6))
    await engine.start()
    try:
        assert await members(db, "recent") == {"ana"}
        clock.advance(days=2)
        for _ in range(100):
            if not await members(db, "recent"):
                break
            await asyncio.sleep(0.05)
        assert await members(db, "recent") == set()
    finally:
        await engine.stop()
    assert engine._task is None


async def test_stop_without_start(engine):
    await engine.stop()


async def test_failing_segment_keeps_others_working(db, clock, caplog):
    # JSON_STORAGE_SIZE exists in MySQL 8 but not in MariaDB: it fails on the server only.
    segments = {"pro": SEGMENTS["pro"], "broken": "SELECT id FROM users WHERE JSON_STORAGE_SIZE(attributes) > 0"}
    engine = SegmentEngine(config_of(segments), db, clock)
    await add_user(db, "ana", {"plan": "pro"})
    await add_user(db, "ben", {"plan": "pro"})
    await db.fetch_all("INSERT INTO segment_members VALUES ('broken', 'ana', %s)", (T0,))
    with caplog.at_level(logging.ERROR, logger="segflowd.segments.engine"):
        assert await evaluate(engine, db, "ana") == MembershipChanges(entered=["pro"])
        assert await evaluate(engine, db, "ben") == MembershipChanges(entered=["pro"])
    assert await members(db, "broken") == {"ana"}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].segment == "broken"

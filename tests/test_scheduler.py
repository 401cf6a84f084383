"""The scheduler: claims, leases, SKIP LOCKED, retries, and the background loop on a FakeClock."""

import asyncio
import logging
from collections import Counter
from datetime import timedelta

import asyncmy
import asyncmy.errors
import pytest

from segflowd.clock import FakeClock
from flowcases.harness import (
    START,
    RuleSegments,
    campaign_config,
    journal,
    make_engine,
    messages,
    pending,
    put_user,
    runs,
    templates_sent,
)


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def config_for(write_config):
    def build(flow="flowcases.kinds:send_wait_send", scheduler=None, **campaign):
        spec = {"segments": ["all-users"], "flow": flow, **campaign}
        sections = {"scheduler": scheduler} if scheduler else {}
        return campaign_config(write_config, {"c": spec}, **sections)

    return build


async def eventually(check, timeout=10.0):
    """Poll an async condition in real time; the clock under test does not move."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def _users(engine, count, prefix="u"):
    async with engine.db.transaction() as cur:
        rows = [(f"{prefix}{i:05d}", START, START) for i in range(count)]
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, '{}', %s, %s)", rows)
        await cur.executemany(
            "INSERT INTO segment_members (segment, user_id, entered_at) VALUES ('all-users', %s, %s)",
            [(row[0], START) for row in rows],
        )
    started, _ = await engine.reconcile_enrollment()
    assert started == count


# --- claims and leases ------------------------------------------------------------


async def test_claim_leases_due_steps(config_for, db, clock):
    config = config_for()
    engine = make_engine(config, db, clock)
    await put_user(engine, "u1")
    engine.load_flows()
    [claim] = await engine.scheduler.claim(10)
    step = await pending(db, claim.run_id)
    assert step["leased_by"] == claim.token
    assert step["lease_until"] == START + config.scheduler.lease
    assert claim.token.startswith(engine.scheduler.name)

    other = make_engine(config, db, clock)
    other.load_flows()
    assert await other.scheduler.claim(10) == []


async def test_claim_takes_oldest_due_first(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    engine.load_flows()
    await put_user(engine, "late")
    clock.advance(seconds=-60)
    await put_user(engine, "early")
    clock.advance(seconds=60)
    [claim] = await engine.scheduler.claim(1)
    assert claim.user_id == "early"


async def test_claim_ignores_future_steps(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    await put_user(engine, "u1")
    await engine.run_due_steps()
    assert await engine.scheduler.claim(10) == []


async def test_claim_skips_unknown_campaign(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    engine.load_flows()
    async with db.transaction() as cur:
        await cur.execute(
            "INSERT INTO campaign_runs (campaign, user_id, status, active_key, started_at) "
            "VALUES ('removed', 'u1', 'active', 'removed:u1', %s)",
            (START,),
        )
        await cur.execute(
            "INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at) VALUES (%s, 'removed', 'u1', 0, %s)",
            (cur.lastrowid, START),
        )
    assert await engine.scheduler.claim(10) == []


async def test_claim_skips_locked_rows(config_for, db, clock, database_url):
    engine = make_engine(config_for(), db, clock)
    engine.load_flows()
    await put_user(engine, "u1")
    await put_user(engine, "u2")
    [first] = await runs(db, "u1")

    conn = await asyncmy.connect(
        host=database_url.host, port=database_url.port, user=database_url.user,
        password=database_url.password, database=database_url.database, autocommit=False,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT run_id FROM pending_steps WHERE run_id = %s FOR UPDATE", (first["id"],))
            claims = await asyncio.wait_for(engine.scheduler.claim(10), timeout=5)
            assert [claim.user_id for claim in claims] == ["u2"]
        await conn.rollback()
    finally:
        conn.close()
    [claim] = await engine.scheduler.claim(10)
    assert claim.user_id == "u1"


async def test_release_gives_steps_back(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    engine.load_flows()
    await put_user(engine, "u1")
    claims = await engine.scheduler.claim(10)
    await engine.scheduler.release(claims)
    step = await pending(db, claims[0].run_id)
    assert step["leased_by"] is None
    assert step["lease_until"] is None
    assert len(await engine.scheduler.claim(10)) == 1


async def test_expired_lease_is_claimed_again(config_for, db, clock):
    """A claim whose process stalled past its lease is taken over, and the step runs once."""
    config = config_for()
    stalled = make_engine(config, db, clock)
    stalled.load_flows()
    await put_user(stalled, "u1")
    [stale] = await stalled.scheduler.claim(10)

    clock.advance(config.scheduler.lease - timedelta(seconds=1))
    rescuer = make_engine(config, db, clock)
    assert await rescuer.run_due_steps() == 0
    clock.advance(seconds=2)
    assert await rescuer.run_due_steps() == 1

    outcome = await stalled.scheduler.execute(stale)
    assert outcome.skipped == "another scheduler took the step after this claim's lease ran out"
    assert outcome.executed == []
    [run] = await runs(db, "u1")
    assert len(await journal(db, run["id"])) == 2
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_stale_claim_does_nothing_before_new_owner_runs(config_for, db, clock):
    config = config_for()
    first = make_engine(config, db, clock)
    second = make_engine(config, db, clock)
    first.load_flows()
    second.load_flows()
    await put_user(first, "u1")
    [stale] = await first.scheduler.claim(10)
    clock.advance(config.scheduler.lease + timedelta(seconds=1))
    [fresh] = await second.scheduler.claim(10)

    assert (await first.scheduler.execute(stale)).skipped is not None
    assert (await second.scheduler.execute(fresh)).executed == [(0, "send_email"), (1, "wait")]
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_claim_of_ended_run_is_skipped(config_for, db, clock):
    engine = make_engine(config_for(behavior="dynamic", segments=["vip"]), db, clock)
    engine.load_flows()
    await put_user(engine, "u1", vip=True)
    [claim] = await engine.scheduler.claim(10)
    await put_user(engine, "u1", vip=False)
    outcome = await engine.scheduler.execute(claim)
    assert outcome.skipped == "the run ended before this step ran"
    assert await messages(db) == []


# --- errors outside flow code -----------------------------------------------------------


class FlakySegments(RuleSegments):
    """Raises the given error from evaluate_user a number of times, then works."""

    def __init__(self, clock, error, times):
        super().__init__(clock)
        self.error = error
        self.times = times
        self.armed = False

    async def evaluate_user(self, cur, user_id, *, event_name=None):
        if self.armed and self.times > 0:
            self.times -= 1
            raise self.error
        return await super().evaluate_user(cur, user_id, event_name=event_name)


async def test_transient_error_rolls_back_and_retries(config_for, db, clock, caplog):
    caplog.set_level(logging.WARNING, logger="segflowd.campaigns.scheduler")
    config = config_for(flow="flowcases.kinds:mark_onboarded")
    segments = FlakySegments(clock, asyncmy.errors.OperationalError(1213, "Deadlock found"), times=1)
    engine = make_engine(config, db, clock, segments)
    await put_user(engine, "u1")
    segments.armed = True

    assert await engine.run_due_steps() == 2
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert [entry["kind"] for entry in await journal(db, run["id"])] == ["update_user", "send_email"]
    assert len(await messages(db, "u1")) == 1
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "step_retry"]
    assert record.levelno == logging.WARNING
    assert record.run_id == run["id"]


async def test_other_error_keeps_lease_until_it_ends(config_for, db, clock, caplog):
    caplog.set_level(logging.ERROR, logger="segflowd.campaigns.scheduler")
    config = config_for(flow="flowcases.kinds:mark_onboarded")
    segments = FlakySegments(clock, RuntimeError("segment engine bug"), times=1)
    engine = make_engine(config, db, clock, segments)
    await put_user(engine, "u1")
    segments.armed = True

    assert await engine.run_due_steps() == 1
    [run] = await runs(db, "u1")
    assert run["status"] == "active"
    assert (await pending(db, run["id"]))["leased_by"] is not None
    assert await journal(db, run["id"]) == []
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "step_error"]
    assert record.exc_info[0] is RuntimeError

    assert await engine.run_due_steps() == 0
    clock.advance(config.scheduler.lease + timedelta(seconds=1))
    assert await engine.run_due_steps() == 1
    assert (await runs(db, "u1"))[0]["status"] == "completed"


# --- the background loop --------------------------------------------------------------------


async def test_background_loop_follows_fake_clock(config_for, db, clock):
    engine = make_engine(config_for(scheduler={"poll_interval": "50ms"}), db, clock)
    await engine.start()
    try:
        await put_user(engine, "u1")
        engine.wake()
        await eventually(lambda: templates_sent(db, "u1"))
        [run] = await runs(db, "u1")
        await eventually(lambda: pending(db, run["id"]))

        clock.advance(days=30)
        await eventually(lambda: _status_is(db, "u1", "completed"))
        assert await templates_sent(db, "u1") == ["welcome", "reminder"]
    finally:
        await engine.stop()
    assert not engine.scheduler.running


async def _status_is(db, user_id, status):
    return [run["status"] for run in await runs(db, user_id)] == [status]


async def test_background_loop_wakes_on_event(config_for, db, clock):
    from segflowd.db import dump_json
    from segflowd.model import Event

    engine = make_engine(config_for(flow="flowcases.kinds:wait_for_purchase", scheduler={"poll_interval": "10s"}), db, clock)
    await put_user(engine, "u1")
    await engine.run_due_steps()
    await engine.start()
    try:
        async with db.transaction() as cur:
            await cur.execute(
                "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES ('u1', 'purchase', %s, %s, %s)",
                (dump_json({"amount": 3}), START, START),
            )
            await engine.on_event(cur, Event(cur.lastrowid, "u1", "purchase", {"amount": 3}, START), START)
        engine.wake()
        # The poll interval is 10 s, so only wake() can make this pass in time.
        await eventually(lambda: templates_sent(db, "u1"), timeout=5)
    finally:
        await engine.stop()


async def test_start_enrolls_existing_members(config_for, db, clock):
    engine = make_engine(config_for(scheduler={"poll_interval": "50ms"}), db, clock)
    async with db.transaction() as cur:
        await cur.execute("INSERT INTO users (id, attributes, created_at, updated_at) VALUES ('u1', '{}', %s, %s)", (START, START))
        await cur.execute("INSERT INTO segment_members VALUES ('all-users', 'u1', %s)", (START,))
    await engine.start()
    try:
        await eventually(lambda: templates_sent(db, "u1"))
    finally:
        await engine.stop()


async def test_stop_leaves_no_lease_behind(config_for, db, clock):
    config = config_for(flow="flowcases.kinds:send_once", scheduler={"workers": 1, "batch_size": 100})
    engine = make_engine(config, db, clock)
    await _users(engine, 300)
    await engine.start()
    await eventually(lambda: messages(db))
    await engine.stop()

    leased = await db.fetch_one("SELECT COUNT(*) AS n FROM pending_steps WHERE leased_by IS NOT NULL")
    assert leased["n"] == 0
    done = await db.fetch_one("SELECT COUNT(*) AS n FROM campaign_runs WHERE status = 'completed'")
    sent = await db.fetch_one("SELECT COUNT(*) AS n FROM messages")
    assert done["n"] == sent["n"]
    assert done["n"] > 0
    remaining = await make_engine(config, db, clock).run_due_steps()
    assert done["n"] + remaining == 300


async def test_two_schedulers_share_work_without_repeats(config_for, db, clock, caplog):
    """Two schedulers on one database: every step runs once, and both run some."""
    caplog.set_level(logging.DEBUG, logger="segflowd.campaigns.scheduler")
    config = config_for(scheduler={"poll_interval": "20ms", "batch_size": 20, "workers": 3})
    first = make_engine(config, db, clock)
    second = make_engine(config, db, clock)
    await _users(first, 400)
    await first.start()
    await second.start()
    try:
        await eventually(lambda: _count(db, "SELECT COUNT(*) AS n FROM messages", 400))
        clock.advance(hours=3)
        await eventually(lambda: _count(db, "SELECT COUNT(*) AS n FROM campaign_runs WHERE status = 'completed'", 400))
    finally:
        await first.stop()
        await second.stop()

    executed = [(r.run_id, r.step_index) for r in caplog.records if getattr(r, "action", None) == "step_executed"]
    assert len(executed) == 400 * 3
    assert max(Counter(executed).values()) == 1
    by_scheduler = Counter(r.scheduler for r in caplog.records if getattr(r, "action", None) == "step_executed")
    assert set(by_scheduler) == {first.scheduler.name, second.scheduler.name}
    assert await _count(db, "SELECT COUNT(*) AS n FROM messages", 800)
    assert await _count(db, "SELECT COUNT(*) AS n FROM run_steps", 1200)


async def _count(db, sql, expected):
    return (await db.fetch_one(sql))["n"] == expected


async def test_pending_step_without_run_is_removed(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    async with db.transaction() as cur:
        await cur.execute(
            "INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at) VALUES (4242, 'c', 'u1', 0, %s)",
            (START,),
        )
    assert await engine.run_due_steps() == 1
    assert await pending(db, 4242) is None


async def test_pending_step_of_ended_run_is_removed(config_for, db, clock):
    engine = make_engine(config_for(), db, clock)
    await put_user(engine, "u1")
    [run] = await runs(db, "u1")
    await db.fetch_all("UPDATE campaign_runs SET status = 'failed' WHERE id = %s", (run["id"],))
    assert await engine.run_due_steps() == 1
    assert await pending(db, run["id"]) is None
    assert await messages(db) == []


async def test_claim_failures_are_logged_once_then_rate_limited(config_for, db, clock, caplog):
    caplog.set_level(logging.INFO, logger="segflowd.campaigns.scheduler")
    engine = make_engine(config_for(), db, clock)
    scheduler = engine.scheduler
    error = asyncmy.errors.OperationalError(2013, "Lost connection to MySQL server during query")
    for _ in range(5):
        scheduler._claim_failed(error)
    records = [r for r in caplog.records if getattr(r, "action", None) == "claim_retry"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].failures == 1
    assert scheduler._claim_failures == 5

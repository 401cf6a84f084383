"""Enrollment: `segments` all, `exclude` none; static at most once ever; dynamic exits and re-enters."""

from datetime import timedelta

import pytest

from segflowd.clock import FakeClock
from segflowd.metrics import REGISTRY
from segflowd.model import MembershipChanges
from segflowd.timestamps import format_timestamp
from flowcases.harness import (
    START,
    campaign_config,
    journal,
    make_engine,
    pending,
    put_user,
    runs,
    set_membership,
    templates_sent,
)


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def engine_for(write_config, db, clock):
    def build(behavior="static", segments=("all-users",), exclude=(), flow="flowcases.kinds:send_wait_send", **more):
        campaigns = {"c": {"segments": list(segments), "exclude": list(exclude), "behavior": behavior, "flow": flow}}
        campaigns.update(more)
        return make_engine(campaign_config(write_config, campaigns), db, clock)

    return build


async def _statuses(db, user_id="u1"):
    return [run["status"] for run in await runs(db, user_id)]


# --- qualification ------------------------------------------------------------------


async def test_qualifying_user_starts_run(engine_for, db):
    engine = engine_for()
    await set_membership(engine, "u1", {"all-users"})
    [run] = await runs(db, "u1")
    assert run["campaign"] == "c"
    assert run["status"] == "active"
    assert run["started_at"] == START
    assert run["static_key"] == "c:u1"
    assert run["active_key"] == "c:u1"
    step = await pending(db, run["id"])
    assert step["step_index"] == 0
    assert step["due_at"] == START
    assert step["campaign"] == "c"
    assert step["user_id"] == "u1"


async def test_needs_every_segment(engine_for, db):
    engine = engine_for(segments=("all-users", "vip"))
    await set_membership(engine, "u1", {"all-users"})
    assert await runs(db, "u1") == []
    await set_membership(engine, "u1", {"all-users", "vip"})
    assert await _statuses(db) == ["active"]


async def test_excluded_segment_blocks_run(engine_for, db):
    engine = engine_for(exclude=("unsubscribed",))
    await set_membership(engine, "u1", {"all-users", "unsubscribed"})
    assert await runs(db, "u1") == []
    await set_membership(engine, "u1", {"all-users"})
    assert await _statuses(db) == ["active"]


async def test_unrelated_change_is_ignored(engine_for, db):
    engine = engine_for(segments=("vip",))
    await set_membership(engine, "u1", {"trial"})
    assert await runs(db, "u1") == []


async def test_empty_changes_do_nothing(engine_for, db, clock):
    engine = engine_for()
    async with db.transaction() as cur:
        await engine.on_membership_change(cur, "u1", MembershipChanges(), clock.now())
    assert await runs(db) == []


async def test_enrollment_twice_starts_one_run(engine_for, db, clock):
    engine = engine_for(behavior="dynamic")
    await set_membership(engine, "u1", {"all-users"})
    async with db.transaction() as cur:
        await engine.on_membership_change(cur, "u1", MembershipChanges(entered=["all-users"]), clock.now())
    assert await _statuses(db) == ["active"]


async def test_several_campaigns_enroll_together(engine_for, db):
    engine = engine_for(
        other={"segments": ["vip"], "behavior": "dynamic", "flow": "flowcases.kinds:send_once"},
        excluded={"segments": ["all-users"], "exclude": ["vip"], "flow": "flowcases.kinds:send_once"},
    )
    await set_membership(engine, "u1", {"all-users", "vip"})
    assert sorted(run["campaign"] for run in await runs(db, "u1")) == ["c", "other"]


# --- static -----------------------------------------------------------------------------


async def test_static_run_survives_leaving(engine_for, db, clock):
    engine = engine_for(segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    await put_user(engine, "u1", vip=False)
    assert await _statuses(db) == ["active"]
    clock.advance(days=1)
    await engine.run_due_steps()
    assert await _statuses(db) == ["completed"]
    assert await templates_sent(db, "u1") == ["welcome", "reminder"]


async def test_static_never_runs_twice(engine_for, db, clock):
    engine = engine_for(segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    clock.advance(days=1)
    await engine.run_due_steps()
    assert await _statuses(db) == ["completed"]

    await put_user(engine, "u1", vip=False)
    await put_user(engine, "u1", vip=True)
    assert await _statuses(db) == ["completed"]
    assert await engine.run_due_steps() == 0
    assert await templates_sent(db, "u1") == ["welcome", "reminder"]


async def test_static_key_blocks_concurrent_second_run(engine_for, db, clock):
    """Even a run inserted behind enrollment's back keeps a static campaign to one run."""
    engine = engine_for()
    await set_membership(engine, "u1", {"all-users"})
    from segflowd.campaigns.runs import start_run

    async with db.transaction() as cur:
        assert await start_run(cur, engine.config.campaigns["c"], "u1", clock.now()) is None
    assert len(await runs(db, "u1")) == 1


# --- dynamic -----------------------------------------------------------------------------


async def test_dynamic_run_exits_when_user_leaves(engine_for, db, clock):
    engine = engine_for(behavior="dynamic", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["welcome"]

    clock.advance(hours=1)
    await put_user(engine, "u1", vip=False)
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    assert run["ended_at"] == START + timedelta(hours=1)
    assert run["active_key"] is None
    assert run["static_key"] is None
    assert await pending(db, run["id"]) is None

    clock.advance(days=2)
    assert await engine.run_due_steps() == 0
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_dynamic_run_exits_on_excluded_segment(engine_for, db):
    engine = engine_for(behavior="dynamic", exclude=("unsubscribed",))
    await put_user(engine, "u1")
    await engine.run_due_steps()
    await put_user(engine, "u1", unsubscribed=True)
    assert await _statuses(db) == ["exited"]


async def test_dynamic_requalifying_starts_new_run(engine_for, db, clock):
    engine = engine_for(behavior="dynamic", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    await put_user(engine, "u1", vip=False)
    clock.advance(hours=1)
    await put_user(engine, "u1", vip=True)

    first, second = await runs(db, "u1")
    assert first["status"] == "exited"
    assert second["status"] == "active"
    assert second["started_at"] == START + timedelta(hours=1)
    await engine.run_due_steps()
    clock.advance(days=1)
    await engine.run_due_steps()
    assert await _statuses(db) == ["exited", "completed"]
    assert await templates_sent(db, "u1") == ["welcome", "welcome", "reminder"]


async def test_dynamic_completed_run_not_restarted_while_qualifying(engine_for, db, clock):
    engine = engine_for(behavior="dynamic", segments=("all-users",), exclude=("unsubscribed",))
    await put_user(engine, "u1")
    await engine.run_due_steps()
    clock.advance(days=1)
    await engine.run_due_steps()
    await put_user(engine, "u1", vip=True)
    assert await _statuses(db) == ["completed"]


async def test_static_and_dynamic_rules_side_by_side(engine_for, db, clock):
    """One user leaves and re-qualifies: a second dynamic run, never a second static one."""
    engine = engine_for(
        behavior="static",
        segments=("vip",),
        again={"segments": ["vip"], "behavior": "dynamic", "flow": "flowcases.kinds:send_wait_send"},
    )
    await put_user(engine, "u1", vip=True)
    await put_user(engine, "u1", vip=False)
    await put_user(engine, "u1", vip=True)
    by_campaign = {}
    for run in await runs(db, "u1"):
        by_campaign.setdefault(run["campaign"], []).append(run["status"])
    assert by_campaign == {"c": ["active"], "again": ["exited", "active"]}


# --- catching up at start -------------------------------------------------------------------


async def test_reconcile_enrolls_existing_members(engine_for, db, clock):
    engine = engine_for(segments=("vip",), exclude=("unsubscribed",))
    async with db.transaction() as cur:
        for user_id, segments in {"u1": ["vip"], "u2": ["vip", "unsubscribed"], "u3": ["trial"]}.items():
            await cur.execute("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, '{}', %s, %s)",
                              (user_id, START, START))
            for segment in segments:
                await cur.execute("INSERT INTO segment_members VALUES (%s, %s, %s)", (segment, user_id, START))

    assert await engine.reconcile_enrollment() == (1, 0)
    assert [run["user_id"] for run in await runs(db)] == ["u1"]
    assert await engine.reconcile_enrollment() == (0, 0)


async def test_reconcile_does_not_restart_finished_runs(engine_for, db, clock):
    engine = engine_for(behavior="dynamic", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    clock.advance(days=1)
    await engine.run_due_steps()
    assert await engine.reconcile_enrollment() == (0, 0)
    assert await _statuses(db) == ["completed"]


async def test_reconcile_exits_dynamic_runs_that_no_longer_qualify(engine_for, db, clock):
    engine = engine_for(behavior="dynamic", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await put_user(engine, "u2", vip=True)
    await db.fetch_all("DELETE FROM segment_members WHERE user_id = 'u1'")
    assert await engine.reconcile_enrollment() == (0, 1)
    assert await _statuses(db, "u1") == ["exited"]
    assert await _statuses(db, "u2") == ["active"]


async def test_reconcile_handles_many_users(engine_for, db):
    engine = engine_for()
    async with db.transaction() as cur:
        rows = [(f"user-{i:04d}", START, START) for i in range(1203)]
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, '{}', %s, %s)", rows)
        await cur.executemany(
            "INSERT INTO segment_members (segment, user_id, entered_at) VALUES (%s, %s, %s)",
            [("all-users", user_id, START) for user_id, _, _ in rows],
        )
    assert await engine.reconcile_enrollment() == (1203, 0)
    count = await db.fetch_one("SELECT COUNT(*) AS n FROM pending_steps")
    assert count["n"] == 1203


# --- user deletion and the user's runs --------------------------------------------------------


async def test_stop_user_runs(engine_for, db, clock):
    engine = engine_for(done={"segments": ["all-users"], "flow": "flowcases.kinds:send_once"})
    await put_user(engine, "u1")
    await put_user(engine, "u2")
    await engine.run_due_steps()
    clock.advance(minutes=5)
    ended = REGISTRY.get_sample_value("segflowd_campaign_runs_ended_total", {"campaign": "c", "status": "exited"}) or 0.0
    async with db.transaction() as cur:
        await engine.stop_user_runs(cur, "u1", clock.now())
    assert REGISTRY.get_sample_value(
        "segflowd_campaign_runs_ended_total", {"campaign": "c", "status": "exited"}
    ) == ended + 1

    by_campaign = {run["campaign"]: run for run in await runs(db, "u1")}
    assert by_campaign["c"]["status"] == "exited"
    assert by_campaign["c"]["error"] == "the user was deleted"
    assert by_campaign["c"]["ended_at"] == START + timedelta(minutes=5)
    assert by_campaign["done"]["status"] == "completed"
    assert await pending(db, by_campaign["c"]["id"]) is None
    assert await journal(db, by_campaign["c"]["id"]) == []
    assert await journal(db, by_campaign["done"]["id"]) == []
    assert [run["status"] for run in await runs(db, "u2")] == ["active", "completed"]


async def test_runs_of_lists_runs_newest_first(engine_for, db, clock):
    engine = engine_for(
        behavior="dynamic",
        segments=("vip",),
        waiter={"segments": ["all-users"], "flow": "flowcases.kinds:wait_for_purchase"},
    )
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    await put_user(engine, "u1", vip=False)
    async with db.transaction() as cur:
        listed = await engine.runs_of(cur, "u1")
    assert [(run["campaign"], run["status"]) for run in listed] == [("waiter", "active"), ("c", "exited")]
    waiter, exited = listed
    assert waiter["next_step"] == 1
    assert waiter["next_step_due_at"] == format_timestamp(START + timedelta(days=7))
    assert waiter["waiting_for_event"] == "purchase"
    assert waiter["started_at"] == format_timestamp(START)
    assert waiter["ended_at"] is None
    assert exited["next_step_due_at"] is None
    assert exited["ended_at"] == format_timestamp(START)
    assert isinstance(waiter["run_id"], int)


async def test_runs_of_unknown_user_is_empty(engine_for, db):
    engine = engine_for()
    async with db.transaction() as cur:
        assert await engine.runs_of(cur, "nobody") == []

"""Campaign runs against the real database: each step kind, each status, replay and divergence.

Time moves with FakeClock and `run_due_steps` runs whatever is due, so a
week-long flow runs in milliseconds.
"""

import logging
from datetime import timedelta

import pytest

from segflowd.campaigns.runner import MAX_STEPS_PER_WAKE
from segflowd.clock import FakeClock
from segflowd.db import dump_json
from segflowd.metrics import REGISTRY
from segflowd.model import Event
from flowcases.harness import (
    START,
    campaign_config,
    journal,
    make_engine,
    messages,
    pending,
    put_user,
    runs,
    templates_sent,
)


def _campaign(flow, behavior="static", segments=("all-users",), exclude=()):
    return {"segments": list(segments), "exclude": list(exclude), "behavior": behavior, "flow": flow}


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def engine_for(write_config, db, clock):
    """Build an engine for one campaign named `c` (or several) running the given flows."""

    def build(flow=None, campaigns=None, **campaign):
        campaigns = campaigns or {"c": _campaign(flow, **campaign)}
        return make_engine(campaign_config(write_config, campaigns), db, clock)

    return build


async def _event(engine, user_id, name, attributes):
    """Store an event and wake waiting runs in one transaction, as ingest does."""
    now = engine.clock.now()
    async with engine.db.transaction() as cur:
        await cur.execute(
            "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES (%s, %s, %s, %s, %s)",
            (user_id, name, dump_json(attributes), now, now),
        )
        event = Event(cur.lastrowid, user_id, name, attributes, now)
        await engine.on_event(cur, event, now)
    engine.wake()
    return event


def _steps_counter(kind, outcome):
    return REGISTRY.get_sample_value("segflowd_campaign_steps_total", {"kind": kind, "outcome": outcome}) or 0.0


# --- send_email ----------------------------------------------------------------


async def test_send_email_queues_message(engine_for, db):
    engine = engine_for("flowcases.kinds:send_once")
    before = _steps_counter("send_email", "ok")
    await put_user(engine, "u1", plan="trial", name="Ann")
    assert await engine.run_due_steps() == 1

    [run] = await runs(db, "u1")
    [message] = await messages(db, "u1")
    assert message["message_key"] == f"campaign:{run['id']}:0"
    assert message["kind"] == "campaign"
    assert message["template"] == "welcome"
    assert message["campaign"] == "c"
    assert message["run_id"] == run["id"]
    assert message["status"] == "queued"
    assert message["context"] == {
        "user": {"id": "u1", "plan": "trial", "name": "Ann"},
        "event": None,
        "campaign": "c",
        "params": {"plan": "trial"},
    }
    assert engine.messages.wakes >= 1
    assert _steps_counter("send_email", "ok") == before + 1


async def test_send_email_unknown_template_fails_run(engine_for, db):
    engine = engine_for("flowcases.kinds:unknown_template")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "failed"
    assert "template 'no-such-template' is not defined" in run["error"]
    assert "defined templates: complete-profile, first-purchase-nudge, goodbye, reminder, welcome" in run["error"]
    assert await messages(db) == []


async def test_send_email_non_json_keyword_fails_run(engine_for, db):
    engine = engine_for("flowcases.kinds:not_json")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "failed"
    assert "must be JSON data" in run["error"]


# --- wait ----------------------------------------------------------------------


async def test_wait_resumes_at_due_time(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:send_wait_send")
    await put_user(engine, "u1")
    assert await engine.run_due_steps() == 1
    [run] = await runs(db, "u1")
    step = await pending(db, run["id"])
    assert step["step_index"] == 2
    assert step["due_at"] == START + timedelta(hours=2, minutes=30)

    clock.advance(hours=2, minutes=29)
    assert await engine.run_due_steps() == 0
    assert await templates_sent(db, "u1") == ["welcome"]

    clock.advance(minutes=1)
    assert await engine.run_due_steps() == 1
    assert await templates_sent(db, "u1") == ["welcome", "reminder"]
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert run["ended_at"] == START + timedelta(hours=2, minutes=30)
    assert run["active_key"] is None
    assert await pending(db, run["id"]) is None


async def test_wait_takes_timedelta(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:wait_timedelta")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert (await pending(db, run["id"]))["due_at"] == START + timedelta(days=3)
    clock.advance(days=3)
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["reminder"]


async def test_waits_of_days_repeat(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:daily_reminders")
    await put_user(engine, "u1")
    for day in range(5):
        assert await engine.run_due_steps() == 1
        assert len(await templates_sent(db, "u1")) == day + 1
        clock.advance(days=1)
    assert await engine.run_due_steps() == 1
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert len(await journal(db, run["id"])) == 10


# --- wait_for_event -------------------------------------------------------------


async def test_wait_for_event_times_out(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:wait_for_purchase")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    step = await pending(db, run["id"])
    assert step["wait_event"] == "purchase"
    assert step["due_at"] == START + timedelta(days=7)

    clock.set(START + timedelta(days=7, seconds=-1))
    assert await engine.run_due_steps() == 0
    clock.set(START + timedelta(days=7))
    assert await engine.run_due_steps() == 1
    assert await templates_sent(db, "u1") == ["first-purchase-nudge"]
    entries = await journal(db, run["id"])
    assert entries[0]["result"] is None


async def test_purchase_event_wakes_wait_before_timeout(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:wait_for_purchase")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")

    clock.advance(hours=5)
    assert await engine.run_due_steps() == 0
    event = await _event(engine, "u1", "purchase", {"amount": 30})
    step = await pending(db, run["id"])
    assert step["due_at"] == START + timedelta(hours=5)
    assert step["woken_event_id"] == event.id

    assert await engine.run_due_steps() == 1
    [message] = await messages(db, "u1")
    assert message["template"] == "reminder"
    assert message["context"]["params"] == {"amount": 30}
    entries = await journal(db, run["id"])
    assert entries[0]["result"] == {"amount": 30}
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert run["ended_at"] == START + timedelta(hours=5)


async def test_other_events_do_not_wake_wait(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:wait_for_purchase")
    await put_user(engine, "u1")
    await put_user(engine, "u2")
    await engine.run_due_steps()
    clock.advance(hours=1)
    await _event(engine, "u1", "page_view", {})
    await _event(engine, "u2", "purchase", {"amount": 5})
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == []
    [run] = await runs(db, "u1")
    assert (await pending(db, run["id"]))["woken_event_id"] is None


async def test_first_event_wins(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:wait_for_purchase")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    first = await _event(engine, "u1", "purchase", {"amount": 1})
    await _event(engine, "u1", "purchase", {"amount": 2})
    [run] = await runs(db, "u1")
    assert (await pending(db, run["id"]))["woken_event_id"] == first.id
    await engine.run_due_steps()
    [message] = await messages(db, "u1")
    assert message["context"]["params"] == {"amount": 1}


async def test_event_before_wait_does_not_count(engine_for, db, clock):
    """An event wakes only a step already waiting for it."""
    engine = engine_for("flowcases.kinds:wait_for_purchase")
    await put_user(engine, "u1")
    await _event(engine, "u1", "purchase", {"amount": 9})
    await engine.run_due_steps()
    clock.advance(days=7)
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["first-purchase-nudge"]


# --- update_user ----------------------------------------------------------------


async def test_update_user_merges_and_reevaluates(engine_for, db):
    engine = engine_for("flowcases.kinds:mark_onboarded")
    await put_user(engine, "u1", plan="trial", name="Ann")
    calls = engine.segments.calls
    await engine.run_due_steps()

    row = await db.fetch_one("SELECT attributes FROM users WHERE id = 'u1'")
    from segflowd.db import load_json

    assert load_json(row["attributes"]) == {"plan": "pro", "name": "Ann", "onboarded": True}
    assert engine.segments.calls == calls + 1
    [message] = await messages(db, "u1")
    assert message["context"]["params"] == {"plan": "pro", "onboarded": True}
    assert message["context"]["user"]["plan"] == "pro"
    [run] = await runs(db, "u1")
    entries = await journal(db, run["id"])
    assert entries[0]["user_snapshot"]["plan"] == "trial"
    assert entries[1]["user_snapshot"]["plan"] == "pro"


async def test_update_user_exits_own_dynamic_run(engine_for, db):
    """update_user moves the user out of the campaign's segment: the run exits with no further send."""
    engine = engine_for("flowcases.kinds:leave_vip", behavior="dynamic", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    assert run["active_key"] is None
    assert await messages(db, "u1") == []
    assert [entry["kind"] for entry in await journal(db, run["id"])] == ["update_user"]
    assert await pending(db, run["id"]) is None


async def test_update_user_static_run_continues(engine_for, db):
    engine = engine_for("flowcases.kinds:leave_vip", behavior="static", segments=("vip",))
    await put_user(engine, "u1", vip=True)
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert await templates_sent(db, "u1") == ["goodbye"]


async def test_update_user_enrolls_in_other_campaign(engine_for, db, clock):
    engine = engine_for(
        campaigns={
            "upgrade": _campaign("flowcases.kinds:mark_onboarded"),
            "trial-to-pro": _campaign("flowcases.kinds:send_once", segments=("all-users",), exclude=("trial",)),
        }
    )
    await put_user(engine, "u1", plan="trial")
    await engine.run_due_steps()
    by_campaign = {run["campaign"]: run["status"] for run in await runs(db, "u1")}
    assert by_campaign == {"upgrade": "completed", "trial-to-pro": "completed"}


# --- replay -----------------------------------------------------------------------


async def test_readme_example_replays_changed_attribute(engine_for, db, clock):
    """The branch on profile_completed replays as first taken after the attribute changes."""
    engine = engine_for("flowcases.onboarding:onboarding")
    await put_user(engine, "u1", name="Ann")
    await engine.run_due_steps()
    clock.advance(days=1)
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["welcome", "complete-profile"]

    clock.advance(days=2)
    await put_user(engine, "u1", profile_completed=True)
    clock.advance(days=5)
    await engine.run_due_steps()

    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert await templates_sent(db, "u1") == ["welcome", "complete-profile", "first-purchase-nudge"]
    entries = await journal(db, run["id"])
    assert [entry["kind"] for entry in entries] == [
        "send_email", "wait", "send_email", "wait_for_event", "send_email", "update_user",
    ]
    assert "profile_completed" not in entries[2]["user_snapshot"]
    assert entries[4]["user_snapshot"]["profile_completed"] is True
    user = await db.fetch_one("SELECT JSON_EXTRACT(attributes, '$.onboarded') AS onboarded FROM users WHERE id = 'u1'")
    assert user["onboarded"] == "true"


async def test_readme_example_branch_sees_change_before_first_run(engine_for, db, clock):
    engine = engine_for("flowcases.onboarding:onboarding")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    clock.advance(hours=3)
    await put_user(engine, "u1", profile_completed=True)
    clock.advance(hours=21)
    await engine.run_due_steps()
    await _event(engine, "u1", "purchase", {"amount": 120})
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["welcome"]
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"


async def test_replay_shows_user_as_each_step_first_ran(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:sees_user")
    await put_user(engine, "u1", plan="trial")
    await engine.run_due_steps()
    await put_user(engine, "u1", plan="pro")
    clock.advance(days=1)
    await engine.run_due_steps()
    sent = await messages(db, "u1")
    assert [message["context"]["params"]["plan"] for message in sent] == ["trial", "pro"]
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"


async def test_replay_does_not_run_steps_again(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:daily_reminders")
    await put_user(engine, "u1")
    for _ in range(3):
        await engine.run_due_steps()
        clock.advance(days=1)
    [run] = await runs(db, "u1")
    entries = await journal(db, run["id"])
    assert [entry["step_index"] for entry in entries] == list(range(6))
    assert [entry["executed_at"] for entry in entries[::2]] == [START + timedelta(days=day) for day in range(3)]
    assert len(await messages(db, "u1")) == 3


# --- divergence ---------------------------------------------------------------------


async def _run_v1_then(engine_for, db, clock, flow):
    first = engine_for("flowcases.diverge:v1")
    await put_user(first, "u1")
    await first.run_due_steps()
    changed = engine_for(flow)
    clock.advance(days=1)
    await changed.run_due_steps()
    [run] = await runs(db, "u1")
    return run


async def test_changed_step_diverges_and_sends_nothing(engine_for, db, clock, caplog):
    caplog.set_level(logging.ERROR, logger="segflowd.campaigns.scheduler")
    run = await _run_v1_then(engine_for, db, clock, "flowcases.diverge:v2")
    assert run["status"] == "diverged"
    assert await templates_sent(db, "u1") == ["welcome"]
    assert await pending(db, run["id"]) is None
    assert "step 0" in run["error"]
    assert "send_email('welcome', variant='b')" in run["error"]

    [record] = [r for r in caplog.records if getattr(r, "action", None) == "run_diverged"]
    assert record.levelno == logging.ERROR
    assert record.campaign == "c"
    assert record.user_id == "u1"
    assert record.run_id == run["id"]
    assert "step 0" in record.getMessage()


async def test_flow_returning_early_diverges(engine_for, db, clock):
    run = await _run_v1_then(engine_for, db, clock, "flowcases.diverge:v3_shorter")
    assert run["status"] == "diverged"
    assert "step 1: the flow returned but the journal recorded wait(seconds=86400.0)" in run["error"]
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_changed_wait_diverges(engine_for, db, clock):
    run = await _run_v1_then(engine_for, db, clock, "flowcases.diverge:v4_longer_wait")
    assert run["status"] == "diverged"
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_step_added_after_journal_runs(engine_for, db, clock):
    run = await _run_v1_then(engine_for, db, clock, "flowcases.diverge:v5_extra_step")
    assert run["status"] == "completed"
    assert await templates_sent(db, "u1") == ["welcome", "reminder", "goodbye"]


# --- failures -------------------------------------------------------------------------


async def test_flow_exception_fails_only_that_run(engine_for, db, clock, caplog):
    caplog.set_level(logging.ERROR, logger="segflowd.campaigns.scheduler")
    engine = engine_for(
        campaigns={
            "buggy": _campaign("flowcases.kinds:raises_after_send"),
            "fine": _campaign("flowcases.kinds:send_wait_send"),
        }
    )
    before = _steps_counter("none", "failed")
    await put_user(engine, "u1", plan="trial")
    await put_user(engine, "u2", plan="pro")
    await engine.run_due_steps()
    clock.advance(hours=3)
    await engine.run_due_steps()

    statuses = {(run["campaign"], run["user_id"]): run["status"] for run in await runs(db)}
    assert statuses == {
        ("buggy", "u1"): "failed",
        ("buggy", "u2"): "failed",
        ("fine", "u1"): "completed",
        ("fine", "u2"): "completed",
    }
    failed = [run for run in await runs(db, "u1") if run["campaign"] == "buggy"][0]
    assert "ValueError: flow bug: no discount for plan 'trial'" in failed["error"]
    assert "Traceback" in failed["error"]
    assert "raises_after_send" in failed["error"]
    assert await pending(db, failed["id"]) is None
    # The welcome the buggy flow sent before it failed stays queued.
    assert sorted(await templates_sent(db, "u1")) == ["reminder", "welcome", "welcome"]

    records = [r for r in caplog.records if getattr(r, "action", None) == "run_failed"]
    assert len(records) == 2
    record = next(r for r in records if r.user_id == "u1")
    assert record.levelno == logging.ERROR
    assert record.campaign == "buggy"
    assert record.run_id == failed["id"]
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert "raises_after_send" in caplog.text
    assert _steps_counter("none", "failed") == before + 2


@pytest.mark.parametrize(
    "flow, message",
    [
        ("flowcases.kinds:yields_garbage", "the flow yielded 'send welcome'"),
        ("flowcases.kinds:forgets_yield", "called rt.send_email('welcome') without yielding it"),
        ("flowcases.kinds:mutates_user", "user is read-only"),
    ],
)
async def test_bad_flows_fail_with_reason(engine_for, db, flow, message):
    engine = engine_for(flow)
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "failed"
    assert message in run["error"]
    assert await messages(db, "u1") == []


async def test_wake_runs_bounded_steps(engine_for, db):
    engine = engine_for("flowcases.kinds:endless_sends")
    await put_user(engine, "u1")
    assert await engine.run_due_steps(limit=1) == 1
    [run] = await runs(db, "u1")
    assert len(await messages(db, "u1")) == MAX_STEPS_PER_WAKE
    step = await pending(db, run["id"])
    assert step["step_index"] == MAX_STEPS_PER_WAKE
    assert step["due_at"] == START
    assert await engine.run_due_steps(limit=1) == 1
    assert len(await messages(db, "u1")) == 2 * MAX_STEPS_PER_WAKE


async def test_flow_that_returns_completes(engine_for, db):
    engine = engine_for("flowcases.kinds:returns_at_once")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    assert await journal(db, run["id"]) == []


async def test_missing_user_exits_run(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:send_wait_send")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    await db.fetch_all("DELETE FROM users WHERE id = 'u1'")
    clock.advance(days=1)
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    assert run["error"] == "the user no longer exists"
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_tampered_journal_fails_run(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:send_wait_send")
    await put_user(engine, "u1")
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    await db.fetch_all("DELETE FROM run_steps WHERE run_id = %s AND step_index = 1", (run["id"],))
    clock.advance(days=1)
    await engine.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "failed"
    assert "journal holds 1 steps but the pending step is step 2" in run["error"]


async def test_lag_is_observed(engine_for, db, clock):
    engine = engine_for("flowcases.kinds:send_wait_send")
    count = REGISTRY.get_sample_value("segflowd_scheduler_lag_seconds_count") or 0.0
    await put_user(engine, "u1")
    await engine.run_due_steps()
    clock.advance(hours=3)
    await engine.run_due_steps()
    assert REGISTRY.get_sample_value("segflowd_scheduler_lag_seconds_count") == count + 2

"""`segflowd status`: runs per campaign and status, due steps with their lag, messages by status."""

from datetime import timedelta

import pytest

from segflowd.campaigns.cli import collect_status, format_seconds, print_status
from segflowd.cli import main
from segflowd.clock import FakeClock
from flowcases.harness import START, campaign_config, make_engine, put_user


@pytest.fixture
def clock():
    return FakeClock(START)


async def _populate(write_config, db, clock):
    config = campaign_config(
        write_config,
        {
            "welcome": {"segments": ["all-users"], "flow": "flowcases.kinds:send_wait_send"},
            "buggy": {"segments": ["vip"], "flow": "flowcases.kinds:yields_garbage"},
        },
    )
    engine = make_engine(config, db, clock)
    await put_user(engine, "u1", vip=True)
    await put_user(engine, "u2")
    await engine.run_due_steps()
    await put_user(engine, "u3")
    clock.advance(seconds=90)
    return config


async def test_collect_status_counts(write_config, db, clock):
    config = await _populate(write_config, db, clock)
    async with db.transaction() as cur:
        await cur.execute(
            "INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at) VALUES (999, 'retired', 'u9', 0, %s)",
            (START,),
        )
        await cur.execute(
            "INSERT INTO campaign_runs (id, campaign, user_id, status, active_key, started_at) "
            "VALUES (999, 'retired', 'u9', 'active', 'retired:u9', %s)",
            (START,),
        )
    status = await collect_status(config, db, clock)
    assert status["campaigns"]["welcome"]["active"] == 3
    assert status["campaigns"]["buggy"]["failed"] == 1
    assert status["campaigns"]["buggy"]["completed"] == 0
    assert status["unknown_campaigns"] == ["retired"]
    assert status["steps_due"] == 2
    assert status["steps_leased"] == 0
    assert status["steps_waiting"] == 2
    assert status["oldest_due_lag_seconds"] == 90.0
    assert status["messages"]["queued"] == 2
    assert status["messages"]["sent"] == 0


async def test_print_status_output(write_config, db, clock, capsys):
    config = await _populate(write_config, db, clock)
    assert await print_status(config, db, clock) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "campaign runs:"
    assert lines[1].split() == ["campaign", "active", "completed", "exited", "failed", "diverged"]
    assert lines[2].split() == ["buggy", "0", "0", "0", "1", "0"]
    assert lines[3].split() == ["welcome", "3", "0", "0", "0", "0"]
    assert "steps: 1 due now (0 being run, oldest due 1m30s ago), 2 waiting" in out
    assert "messages: 2 queued, 0 sent, 0 failed, 0 suppressed" in out


async def test_print_status_empty(write_config, db, capsys):
    config = campaign_config(write_config, {})
    await print_status(config, db)
    out = capsys.readouterr().out
    assert "(no campaigns configured and no runs stored)" in out
    assert "steps: 0 due now (0 being run), 0 waiting" in out


def test_status_command(write_config, database_url, capsys):
    config = campaign_config(write_config, {"welcome": {"segments": ["all-users"], "flow": "flowcases.kinds:send_once"}})
    assert main(["status", "--config", str(config.path)]) == 0
    out = capsys.readouterr().out
    assert "welcome" in out
    assert "messages:" in out


@pytest.mark.parametrize(
    "seconds, text",
    [(0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (7800, "2h10m"), (timedelta(days=3, hours=4).total_seconds(), "3d04h")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text

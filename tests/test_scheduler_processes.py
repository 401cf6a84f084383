"""Real `segflowd` processes on one database: sharing due steps, and surviving kill -9.

Each process logs one JSON `step_executed` line per step after its
transaction commits. With the message keys and the journal, those lines
show that every step ran exactly once and which process ran it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from daemon_process import Daemon
from flowcases.harness import RecordingMessages, RuleSegments, campaign_config
from segflowd.campaigns.engine import CampaignEngine
from segflowd.clock import Clock

BUSY_FLOW = """\
def two_sends(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(seconds=1)
    yield rt.send_email("reminder")


def three_sends(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(seconds=1)
    yield rt.send_email("reminder")
    yield rt.wait(seconds=1)
    yield rt.send_email("goodbye")
"""


def _config(write_config, tmp_path: Path, flow: str, lease: str):
    (tmp_path / "busyflows").mkdir(exist_ok=True)
    (tmp_path / "busyflows" / "__init__.py").write_text("")
    (tmp_path / "busyflows" / "busy.py").write_text(BUSY_FLOW)
    return campaign_config(
        write_config,
        {"busy": {"segments": ["all-users"], "flow": f"busyflows.busy:{flow}"}},
        scheduler={"poll_interval": "50ms", "lease": lease, "batch_size": 50, "workers": 4},
        logging={"level": "DEBUG", "format": "json"},
    )


async def _enroll(config, db, count: int) -> None:
    """Create users in the campaign's segment and start their runs, all due now."""
    now = Clock().now()
    async with db.transaction() as cur:
        rows = [(f"user-{i:05d}", json.dumps({"email": f"user-{i:05d}@example.test"}), now, now) for i in range(count)]
        await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", rows)
        await cur.executemany(
            "INSERT INTO segment_members (segment, user_id, entered_at) VALUES ('all-users', %s, %s)",
            [(row[0], now) for row in rows],
        )
    clock = Clock()
    engine = CampaignEngine(config, db, clock, RuleSegments(clock), RecordingMessages())
    assert await engine.reconcile_enrollment() == (count, 0)


async def _scalar(db, sql: str) -> int:
    return int((await db.fetch_one(sql))["n"])


async def _wait_for(db, sql: str, expected: int, daemons: list[Daemon], timeout: float = 180.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await _scalar(db, sql) < expected:
        for daemon in daemons:
            assert daemon.process.poll() is None, "segflowd exited:\n" + daemon.output()[-5000:]
        if loop.time() > deadline:
            raise AssertionError(f"{sql} did not reach {expected} within {timeout} s")
        await asyncio.sleep(0.1)


def _executed_steps(daemon: Daemon) -> list[dict]:
    steps = []
    for line in list(daemon.lines):
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed process may be cut short
        if record.get("action") == "step_executed":
            steps.append(record)
    return steps


def _errors(daemon: Daemon) -> list[str]:
    """ERROR lines from the campaign code (message delivery reports its own outcomes)."""
    return [line for line in daemon.lines if '"level": "ERROR"' in line and '"logger": "segflowd.campaigns' in line]


async def _start(daemons: list[Daemon]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, daemon.wait_ready) for daemon in daemons))


async def _check_every_step_once(db, runs: int, steps_per_run: int, sends_per_run: int, executed: list[dict]) -> None:
    assert await _scalar(db, "SELECT COUNT(*) AS n FROM campaign_runs WHERE status = 'completed'") == runs
    assert await _scalar(db, "SELECT COUNT(*) AS n FROM run_steps") == runs * steps_per_run
    assert await _scalar(db, "SELECT COUNT(*) AS n FROM pending_steps") == 0
    keys = [row["message_key"] for row in await db.fetch_all("SELECT message_key FROM messages")]
    assert len(keys) == runs * sends_per_run
    expected_keys = {
        f"campaign:{row['run_id']}:{row['step_index']}"
        for row in await db.fetch_all("SELECT run_id, step_index FROM run_steps WHERE kind = 'send_email'")
    }
    assert set(keys) == expected_keys
    repeats = Counter((record["run_id"], record["step_index"]) for record in executed)
    assert repeats
    assert max(repeats.values()) == 1


async def test_two_processes_share_due_steps(write_config, tmp_path, db):
    config = _config(write_config, tmp_path, "two_sends", lease="60s")
    daemons = [Daemon(config.path), Daemon(config.path)]
    try:
        await _start(daemons)
        await _enroll(config, db, 1200)
        await _wait_for(db, "SELECT COUNT(*) AS n FROM campaign_runs WHERE status = 'completed'", 1200, daemons)
        for daemon in daemons:
            assert daemon.terminate() == 0
    finally:
        for daemon in daemons:
            daemon.kill()

    first, second = (_executed_steps(daemon) for daemon in daemons)
    assert len(first) + len(second) == 1200 * 3
    assert len(first) > 0, "the first process ran no step"
    assert len(second) > 0, "the second process ran no step"
    assert {record["scheduler"] for record in first}.isdisjoint({record["scheduler"] for record in second})
    await _check_every_step_once(db, 1200, 3, 2, first + second)
    for daemon in daemons:
        assert _errors(daemon) == []


async def test_kill_9_then_restart_completes_every_run_once(write_config, tmp_path, db):
    config = _config(write_config, tmp_path, "three_sends", lease="2s")
    runs = 1500
    victim = Daemon(config.path)
    successor = None
    try:
        await _start([victim])
        await _enroll(config, db, runs)
        # Kill in the middle: some messages queued, many steps still to run.
        await _wait_for(db, "SELECT COUNT(*) AS n FROM messages", 600, [victim])
        victim.kill()
        sent_at_kill = await _scalar(db, "SELECT COUNT(*) AS n FROM messages")
        assert sent_at_kill < runs * 3

        successor = Daemon(config.path)
        await _start([successor])
        await _wait_for(db, "SELECT COUNT(*) AS n FROM campaign_runs WHERE status = 'completed'", runs, [successor])
        assert successor.terminate() == 0
    finally:
        victim.kill()
        if successor is not None:
            successor.kill()

    before, after = _executed_steps(victim), _executed_steps(successor)
    assert len(before) > 0
    assert len(after) > 0
    # The victim may have committed steps it never got to log; none ran twice.
    assert len(before) + len(after) <= runs * 5
    await _check_every_step_once(db, runs, 5, 3, before + after)
    assert _errors(successor) == []


async def test_daemon_runs_flow_from_http_to_outbox(write_config, tmp_path, db):
    """A user posted to a running daemon gets the campaign's mail in the outbox, with no test driving time."""
    import aiohttp

    config = _config(write_config, tmp_path, "two_sends", lease="60s")
    daemon = Daemon(config.path)
    try:
        await _start([daemon])
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{daemon.url}/api/user/ann",
                json={"attributes": {"email": "ann@example.test", "name": "Ann"}},
                headers={"Authorization": "Bearer test-key"},
            )
            assert response.status == 201
        await _wait_for(db, "SELECT COUNT(*) AS n FROM messages WHERE status = 'sent'", 2, [daemon], timeout=60)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

    [run] = await db.fetch_all("SELECT status FROM campaign_runs WHERE user_id = 'ann'")
    assert run["status"] == "completed"
    outbox = sorted((tmp_path / "outbox").rglob("*.eml"))
    assert len(outbox) == 2

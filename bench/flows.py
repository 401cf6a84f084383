"""Benchmark the campaign scheduler against a real MariaDB or MySQL.

Two measurements, each on a fresh database that is dropped afterwards:

1. burst: `--runs` runs (default 10,000) are due at the same moment, and
   the scheduler runs the first wake of each. The figure is steps per
   second from the start of the scheduler until every run has woken once.
   With `--flow send` (the default) a wake is one `send_email` step that
   completes the run; with `--flow send-wait` it is a `send_email` and a
   `wait`, two steps, and the run stays active.
2. steady: runs due at a steady `--rate` (default 500 steps/s) for
   `--seconds` (default 20 s); the figure is the lag between each step's
   due time and the moment the scheduler ran it (p50, p99, max).

The scheduler runs in this process with the config's scheduler settings,
without the HTTP server or message delivery, so the figures are for
claiming, replaying and recording steps alone.

    .venv/bin/python bench/flows.py [--server mysql://root@127.0.0.1:3306/]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import asyncmy
import yaml

from segflowd.campaigns.engine import CampaignEngine
from segflowd.clock import Clock
from segflowd.config import Config, load_config, parse_database_url
from segflowd.db import Database, apply_schema
from segflowd.model import MembershipChanges

FLOW = '''\
def welcome(user, rt):
    yield rt.send_email("welcome", plan=user.get("plan"))


def welcome_then_wait(user, rt):
    yield rt.send_email("welcome", plan=user.get("plan"))
    yield rt.wait(days=1)
    yield rt.send_email("welcome", plan=user.get("plan"))
'''

# --flow: the function each run executes, and how its first wake ends.
FLOWS = {
    "send": "welcome",                  # one send_email step, then the run completes
    "send-wait": "welcome_then_wait",   # send_email and wait: two steps, the run stays active
}


class NoMessages:
    """Delivery is not part of this benchmark; the engine only calls wake()."""

    def wake(self) -> None:
        pass


class NoSegments:
    """Runs are inserted directly, so no segment is evaluated."""

    def __init__(self) -> None:
        self.listeners: list = []

    async def evaluate_user(self, cur, user_id, *, event_name=None) -> MembershipChanges:
        return MembershipChanges()


def write_project(folder: Path, database_url: str, args: argparse.Namespace) -> Config:
    (folder / "benchflows").mkdir()
    (folder / "benchflows" / "__init__.py").write_text("")
    (folder / "benchflows" / "welcome.py").write_text(FLOW)
    (folder / "welcome.html.j2").write_text("<p>Welcome {{ user.id }}</p>\n")
    config = {
        "database": {"url": database_url, "pool_size": max(16, args.workers + 4)},
        "http": {"listen": "127.0.0.1:0", "api_keys": ["bench-key"], "secret": "bench-secret-value"},
        "email": {"from": "Bench <bench@example.test>"},
        "segments": {"everyone": {"sql": "SELECT id FROM users"}},
        "templates": {"welcome": {"subject": "Welcome", "html": "welcome.html.j2"}},
        "campaigns": {"welcome": {"segments": ["everyone"], "flow": f"benchflows.welcome:{FLOWS[args.flow]}"}},
        "scheduler": {"workers": args.workers, "batch_size": args.batch_size, "poll_interval": args.poll_interval},
        "logging": {"level": "WARNING"},
    }
    path = folder / "segflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path)


async def server_execute(url, statement: str) -> None:
    conn = await asyncmy.connect(host=url.host, port=url.port, user=url.user, password=url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


async def insert_runs(db: Database, due_times: list[datetime]) -> list[int]:
    """Insert one user, one active run and its first pending step per due time; return the run ids."""
    run_ids: list[int] = []
    chunk = 2000
    for start in range(0, len(due_times), chunk):
        part = due_times[start:start + chunk]
        users = [f"bench-{uuid.uuid4().hex[:12]}" for _ in part]
        async with db.transaction() as cur:
            now = Clock().now()
            await cur.executemany(
                "INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)",
                [(user, json.dumps({"plan": "trial", "email": f"{user}@example.test"}), now, now) for user in users],
            )
            await cur.executemany(
                "INSERT INTO campaign_runs (campaign, user_id, status, static_key, active_key, started_at) "
                "VALUES ('welcome', %s, 'active', %s, %s, %s)",
                [(user, f"welcome:{user}", f"welcome:{user}", now) for user in users],
            )
            await cur.execute("SELECT id, user_id FROM campaign_runs WHERE user_id IN %s", (tuple(users),))
            id_of = {row["user_id"]: row["id"] for row in await cur.fetchall()}
            ids = [id_of[user] for user in users]
            await cur.executemany(
                "INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at) VALUES (%s, 'welcome', %s, 0, %s)",
                list(zip(ids, users, part)),
            )
        run_ids += ids
    return run_ids


async def count(db: Database, sql: str) -> int:
    row = await db.fetch_one(sql)
    return int(row["n"])


async def wait_until_done(db: Database, total: int, timeout: float) -> float:
    """Poll until `total` runs have run their first wake; return the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    while True:
        done = await count(db, "SELECT COUNT(DISTINCT run_id) AS n FROM run_steps")
        if done >= total:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} of {total} runs ran within {timeout} s")
        await asyncio.sleep(0.02)


async def burst(config: Config, db: Database, runs: int) -> dict:
    now = Clock().now()
    await insert_runs(db, [now] * runs)
    engine = CampaignEngine(config, db, Clock(), NoSegments(), NoMessages())
    engine.load_flows()
    started = time.monotonic()
    await engine.scheduler.start()
    try:
        finished = await wait_until_done(db, runs, timeout=600)
    finally:
        await engine.stop()
    seconds = finished - started
    steps = await count(db, "SELECT COUNT(*) AS n FROM run_steps")
    return {
        "runs": runs,
        "steps": steps,
        "seconds": round(seconds, 2),
        "wakes_per_second": round(runs / seconds),
        "steps_per_second": round(steps / seconds),
    }


async def steady(config: Config, db: Database, rate: float, seconds: float) -> dict:
    total = int(rate * seconds)
    # Leave time to insert the runs before the first one is due.
    t0 = Clock().now() + timedelta(seconds=3 + total / 5000)
    due = [t0 + timedelta(seconds=i / rate) for i in range(total)]
    run_ids = await insert_runs(db, due)
    due_by_run = dict(zip(run_ids, due))
    engine = CampaignEngine(config, db, Clock(), NoSegments(), NoMessages())
    engine.load_flows()
    await engine.scheduler.start()
    try:
        await wait_until_done(db, total, timeout=seconds + 120)
    finally:
        await engine.stop()
    rows = await db.fetch_all("SELECT run_id, executed_at FROM run_steps WHERE step_index = 0")
    lags = sorted((row["executed_at"] - due_by_run[row["run_id"]]).total_seconds() for row in rows)
    quantiles = statistics.quantiles(lags, n=100)
    return {
        "steps": len(lags),
        "rate": rate,
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "max_ms": round(lags[-1] * 1000, 1),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("SEGFLOW_TEST_SERVER", "mysql://root@127.0.0.1:3306/"),
                        help="server to create the benchmark database on (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=10_000, help="runs due at once in the burst (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=500.0, help="steps per second in the steady test (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the steady test in seconds (default: %(default)s)")
    parser.add_argument("--flow", choices=sorted(FLOWS), default="send",
                        help="send: one step per run; send-wait: send and wait, two steps per wake (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="scheduler.workers (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="scheduler.batch_size (default: %(default)s)")
    parser.add_argument("--poll-interval", default="200ms", help="scheduler.poll_interval (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # DROP DATABASE IF EXISTS and CREATE TABLE IF NOT EXISTS return notes that
    # the driver logs as warnings.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)

    name = f"segflow_bench_{uuid.uuid4().hex[:8]}"
    url = parse_database_url(args.server.rstrip("/") + "/" + name)
    results = {
        "machine": f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "settings": {"flow": args.flow, "workers": args.workers, "batch_size": args.batch_size, "poll_interval": args.poll_interval},
    }
    with tempfile.TemporaryDirectory() as folder:
        for part in ("burst", "steady"):
            await server_execute(url, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            try:
                await apply_schema(url)
                project = Path(folder) / part
                project.mkdir()
                config = write_project(project, url.raw, args)
                db = Database(url, pool_size=config.database.pool_size)
                await db.open()
                try:
                    if part == "burst":
                        results["burst"] = await burst(config, db, args.runs)
                    else:
                        results["steady"] = await steady(config, db, args.rate, args.seconds)
                finally:
                    await db.close()
            finally:
                await server_execute(url, f"DROP DATABASE IF EXISTS `{name}`")
            print(json.dumps({part: results[part]}), file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

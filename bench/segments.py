"""Benchmark segment evaluation against a real MariaDB or MySQL.

For each data size (`--sizes`, default 10k users / 100k events and 100k
users / 2M events), in a database of its own that is dropped afterwards:

1. load users and events with bulk INSERTs, then evaluate the ten segments
   below in full (what `start()` does on a new install);
2. per event: `--events` times (default 2,000), one transaction locks a
   random user, inserts an event with a random name and re-evaluates the
   segments that event name triggers, as ingest does. The figures (p50,
   p95, p99, mean) are the time of `evaluate_user`, which is one read plus
   any membership writes. Then the same read alone is timed twice: with
   the user filter pushed in, and with the segments' SQL as written, where
   the filter wraps the finished result (the server may still push it down
   on its own). A `SELECT 1` round trip on the same connection gives the
   floor;
3. a full refresh of the time-dependent segment `active-7d` over every
   user: once from empty membership (every member enters) and once more
   in the steady state (few changes), in batches of `--batch-size`.

Peak RSS is the process's high-water mark during each phase (reset through
/proc/self/clear_refs where Linux allows it).

    .venv/bin/python bench/segments.py [--server mysql://root@127.0.0.1:3306/] [--sizes 10000:100000,100000:2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import resource
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import asyncmy

from segflowd.clock import Clock
from segflowd.config import SegmentConfig, parse_database_url
from segflowd.db import Database, apply_schema
from segflowd.queries import QUERIES
from segflowd.segments.engine import SegmentEngine
from segflowd.segments.params import compose, join_statements

DATABASE = "segflow_bench_segments"
EVENT_NAMES = ["page_view", "page_view", "page_view", "purchase", "signup", "cart_abandoned", "refund", "search"]
PLANS = ["free", "free", "pro", "max"]
COUNTRIES = ["DE", "FR", "US", "IT", "GB", "ES"]

SEGMENTS = {
    "pro-or-max": "SELECT id FROM users WHERE JSON_EXTRACT(attributes, '$.plan') IN ('pro', 'max')",
    "eu": "SELECT id FROM users WHERE attributes->>'$.country' IN ('DE', 'FR', 'IT', 'ES')",
    "big-spenders": """SELECT u.id FROM users u JOIN events e ON e.user_id = u.id
                       WHERE e.name = 'purchase' GROUP BY u.id HAVING SUM(e.attributes->>'$.amount') > 500""",
    "repeat-buyers": """WITH p AS (SELECT user_id, COUNT(*) AS n FROM events WHERE name = 'purchase' GROUP BY user_id)
                        SELECT p.user_id AS id FROM p WHERE p.n >= 2""",
    "active-7d": "SELECT e.user_id AS id FROM events e WHERE e.created_at >= NOW() - INTERVAL 7 DAY GROUP BY e.user_id",
    "never-purchased": """SELECT u.id FROM users u LEFT JOIN events e ON e.user_id = u.id AND e.name = 'purchase'
                          WHERE e.id IS NULL""",
    "cart-abandoners": """SELECT id FROM (SELECT e.user_id AS id, e.name,
                            ROW_NUMBER() OVER (PARTITION BY e.user_id ORDER BY e.created_at DESC) AS rn
                          FROM events e WHERE e.name IN ('cart_abandoned', 'purchase')) t
                          WHERE rn = 1 AND name = 'cart_abandoned'""",
    "frequent-viewers": """SELECT u.id FROM users u WHERE u.id IN (
                             SELECT user_id FROM events WHERE name = 'page_view' GROUP BY user_id HAVING COUNT(*) >= 10)""",
    "refunded": "SELECT DISTINCT user_id AS id FROM events WHERE name = 'refund' AND JSON_EXTRACT(attributes, '$.amount') > 20",
    "engaged-searchers": """SELECT u.id FROM users u WHERE EXISTS (
                              SELECT 1 FROM events e WHERE e.user_id = u.id AND e.name = 'search'
                              AND e.created_at > DATE_SUB(NOW(), INTERVAL 30 DAY))""",
}
TIME_DEPENDENT = "active-7d"


def peak_rss_mib() -> float:
    """Return the process's peak resident set size since the last reset, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak RSS measurement (Linux 4.0+; otherwise the peak since start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


async def server_execute(url, statement: str) -> None:
    conn = await asyncmy.connect(host=url.host, port=url.port, user=url.user, password=url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


async def load_data(db: Database, users: int, events: int, now: datetime, chunk: int = 5000) -> float:
    """Insert users and events with bulk INSERTs, `chunk` rows at a time; return seconds."""
    started = time.monotonic()
    rng = random.Random(7)
    for first in range(0, users, chunk):
        rows = []
        for i in range(first, min(first + chunk, users)):
            created = now - timedelta(days=rng.randint(0, 700), seconds=rng.randint(0, 86399))
            attributes = {"plan": rng.choice(PLANS), "country": rng.choice(COUNTRIES), "age": rng.randint(18, 80)}
            rows.append((f"user{i:07d}", json.dumps(attributes), created, created))
        async with db.transaction() as cur:
            await cur.executemany("INSERT INTO users (id, attributes, created_at, updated_at) VALUES (%s, %s, %s, %s)", rows)
    for first in range(0, events, chunk):
        rows = []
        for _ in range(first, min(first + chunk, events)):
            user = f"user{rng.randrange(users):07d}"
            name = rng.choice(EVENT_NAMES)
            attributes = {"amount": rng.randint(5, 300)} if name in ("purchase", "refund") else {"path": "/"}
            created = now - timedelta(days=rng.randint(0, 365), seconds=rng.randint(0, 86399))
            rows.append((user, name, json.dumps(attributes), created, created))
        async with db.transaction() as cur:
            await cur.executemany(
                "INSERT INTO events (user_id, name, attributes, created_at, received_at) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
    async with db.transaction() as cur:
        await cur.execute("ANALYZE TABLE users, events")
        await cur.fetchall()
    return time.monotonic() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(values_ms: list[float]) -> str:
    return (
        f"p50 {percentile(values_ms, 0.50):.2f} ms, p95 {percentile(values_ms, 0.95):.2f} ms, "
        f"p99 {percentile(values_ms, 0.99):.2f} ms, mean {statistics.fmean(values_ms):.2f} ms"
    )


class Unpushed:
    """Per-user statements built from the segments' SQL as written, without pushdown."""

    def __init__(self, engine: SegmentEngine) -> None:
        self.engine = engine
        self.branches = {
            name: compose(QUERIES.user_match_branch, segment.query, segment_name=f"'{name}'")
            for name, segment in engine.segments.items()
        }

    def statement(self, names: tuple[str, ...]):
        branches = [self.branches[name] for name in names] + [compose(QUERIES.user_members_branch)]
        return join_statements(branches, "\nUNION ALL\n")


async def timed(cur, statement, now: datetime, user: str) -> float:
    started = time.perf_counter()
    await cur.execute(statement.sql, statement.args(now, user_id=user))
    await cur.fetchall()
    return (time.perf_counter() - started) * 1000


async def per_event(db: Database, engine: SegmentEngine, users: int, samples: int, now: datetime) -> dict:
    """Time evaluate_user after an event insert; then its query alone, with and without pushdown."""
    rng = random.Random(11)
    unpushed = Unpushed(engine)
    evaluate_ms, pushed_ms, unpushed_ms, round_trip_ms, triggered = [], [], [], [], []
    for _ in range(samples):
        user = f"user{rng.randrange(users):07d}"
        name = rng.choice(EVENT_NAMES)
        async with db.transaction() as cur:
            await cur.execute(QUERIES.lock_user, (user,))
            await cur.fetchall()
            await cur.execute(
                QUERIES.insert_event, (user, name, json.dumps({"amount": rng.randint(5, 300)}), now, now)
            )
            started = time.perf_counter()
            await engine.evaluate_user(cur, user, event_name=name)
            evaluate_ms.append((time.perf_counter() - started) * 1000)

            # The read alone, both ways, in random order so neither always finds the pages cached.
            names = engine.triggered_segments(name)
            triggered.append(len(names))
            if names:
                pair = [("pushed", engine._user_statement(names)), ("unpushed", unpushed.statement(names))]
                rng.shuffle(pair)
                for label, statement in pair:
                    elapsed = await timed(cur, statement, now, user)
                    (pushed_ms if label == "pushed" else unpushed_ms).append(elapsed)

            started = time.perf_counter()
            await cur.execute("SELECT 1 AS one")
            await cur.fetchall()
            round_trip_ms.append((time.perf_counter() - started) * 1000)
    return {
        "evaluate": evaluate_ms,
        "pushed": pushed_ms,
        "unpushed": unpushed_ms,
        "round_trip": round_trip_ms,
        "triggered": statistics.fmean(triggered),
    }


async def run_size(server: str, users: int, events: int, samples: int, batch_size: int) -> dict:
    url = parse_database_url(server.rstrip("/") + "/" + DATABASE)
    await server_execute(url, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    await server_execute(url, f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    db = Database(url, pool_size=4)
    results: dict = {"users": users, "events": events}
    try:
        await apply_schema(url)
        await db.open()
        clock = Clock()
        now = clock.now()
        reset_peak_rss()
        results["load_seconds"] = await load_data(db, users, events, now)

        config = SimpleNamespace(
            segments={name: SegmentConfig(name, sql, None, timedelta(minutes=1)) for name, sql in SEGMENTS.items()}
        )
        engine = SegmentEngine(config, db, clock, batch_size=batch_size)
        started = time.monotonic()
        reset_peak_rss()
        await engine.sync_definitions()
        results["start_seconds"] = time.monotonic() - started
        results["start_rss"] = peak_rss_mib()

        reset_peak_rss()
        results["per_event"] = await per_event(db, engine, users, samples, now)
        results["per_event_rss"] = peak_rss_mib()

        await db.fetch_all("DELETE FROM segment_members WHERE segment = %s", (TIME_DEPENDENT,))
        reset_peak_rss()
        started = time.monotonic()
        initial = await engine.refresh_segment(TIME_DEPENDENT)
        results["refresh_initial"] = (time.monotonic() - started, initial)
        started = time.monotonic()
        steady = await engine.refresh_segment(TIME_DEPENDENT)
        results["refresh_steady"] = (time.monotonic() - started, steady)
        results["refresh_rss"] = peak_rss_mib()
    finally:
        await db.close()
        await server_execute(url, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    return results


def report(results: dict) -> None:
    print(f"\n## {results['users']:,} users / {results['events']:,} events")
    print(f"- load: {results['load_seconds']:.1f} s (bulk INSERTs of 5,000 rows)")
    print(f"- start (10 segments evaluated in full): {results['start_seconds']:.1f} s, peak RSS {results['start_rss']:.0f} MiB")
    per = results["per_event"]
    print(f"- per event, segments triggered on average: {per['triggered']:.1f} of {len(SEGMENTS)}")
    print(f"  - evaluate_user, reads and membership writes: {summary(per['evaluate'])}")
    print(f"  - its read alone, user filter pushed in: {summary(per['pushed'])}")
    print(f"  - the same read, SQL as written (filter on the result): {summary(per['unpushed'])}")
    print(f"  - SELECT 1 round trip: {summary(per['round_trip'])}")
    print(f"  - peak RSS {results['per_event_rss']:.0f} MiB")
    for key, label in (("refresh_initial", "from empty membership"), ("refresh_steady", "steady state")):
        seconds, result = results[key]
        print(
            f"- full refresh of {TIME_DEPENDENT} {label}: {seconds:.2f} s, {result.batches} batches, "
            f"{result.entered} entered, {result.left} left"
        )
    print(f"  - peak RSS {results['refresh_rss']:.0f} MiB")


def machine() -> str:
    memory = ""
    try:
        kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} cores{memory}, Python {platform.python_version()}"


async def server_version(server: str) -> str:
    url = parse_database_url(server.rstrip("/") + "/mysql")
    conn = await asyncmy.connect(host=url.host, port=url.port, user=url.user, password=url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT VERSION()")
            return str((await cur.fetchone())[0])
    finally:
        conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark per-event and full segment evaluation.")
    parser.add_argument("--server", default="mysql://root@127.0.0.1:3306/", help="server URL without a database")
    parser.add_argument(
        "--sizes", default="10000:100000,100000:2000000", help="comma-separated users:events pairs (default %(default)s)"
    )
    parser.add_argument("--events", type=int, default=2000, help="events timed per size (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000, help="users per full-evaluation batch (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The server's notes on DROP DATABASE IF EXISTS are not news here.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)

    print(f"# segments benchmark: {machine()}, server {await server_version(args.server)}")
    for pair in args.sizes.split(","):
        users, events = (int(part) for part in pair.split(":"))
        report(await run_size(args.server, users, events, args.events, args.batch_size))


if __name__ == "__main__":
    asyncio.run(main())

"""Measure HTTP ingest: durable events per second, latency and the daemon's peak RSS.

Starts `segflowd` as a child process on a database of its own, drives it
from this process over loopback, and prints a Markdown table. In the same
run it measures the bare commit rate of the database server (one INSERT and
COMMIT per row from asyncmy), so the figures can be read as a ratio.

    .venv/bin/python bench/ingest.py [--seconds 10] [--server mysql://root@127.0.0.1:3306/]

The benchmark database (segflow_bench_ingest) is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncmy
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon_process import Daemon, peak_rss_mib  # noqa: E402

from segflowd.config import parse_database_url  # noqa: E402

DATABASE = "segflow_bench_ingest"
AUTH = {"Authorization": "Bearer bench-key"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def server_sql(server, statement: str) -> None:
    conn = await asyncmy.connect(host=server.host, port=server.port, user=server.user, password=server.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


async def bare_commit_rate(server, connections: int, seconds: float) -> float:
    """Rows per second from a plain INSERT + COMMIT loop: the machine's ceiling."""
    await server_sql(server, f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
    await server_sql(server, f"CREATE TABLE IF NOT EXISTS `{DATABASE}`.commit_probe (id BIGINT AUTO_INCREMENT PRIMARY KEY, attributes JSON)")
    count = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal count
        conn = await asyncmy.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                                     database=DATABASE)
        try:
            async with conn.cursor() as cur:
                while time.monotonic() < deadline:
                    await cur.execute("INSERT INTO commit_probe (attributes) VALUES (%s)", ('{"amount": 12.5}',))
                    await conn.commit()
                    count += 1
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(connections)))
    return count / (time.monotonic() - started)


async def closed_loop(url: str, clients: int, seconds: float) -> dict[str, float]:
    """`clients` workers each POST one event after another for `seconds`."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            nonlocal errors
            i = 0
            while time.monotonic() < deadline:
                i += 1
                started = time.perf_counter()
                body = {"attributes": {"amount": 12.5, "cds": 2, "n": i}}
                async with session.post(f"{url}/api/user/bench-{n}-{i % 50}/event/purchase", json=body,
                                        headers=AUTH) as response:
                    await response.read()
                    if response.status != 201:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    return {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "errors": errors,
        "count": len(latencies),
    }


async def open_loop(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Send events at a fixed `rate` regardless of responses, to measure latency under that load."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(f"{url}/api/user/steady-{i % 500}/event/purchase",
                                    json={"attributes": {"amount": 3}}, headers=AUTH) as response:
                await response.read()
                if response.status != 201:
                    errors += 1
            latencies.append(time.perf_counter() - started)

        tasks = []
        started = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return {"rate": rate, "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "errors": errors, "count": len(latencies)}


async def batches(url: str, clients: int, batch_size: int, seconds: float) -> dict[str, float]:
    """`clients` workers POST /api/batch with `batch_size` track calls each."""
    events = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def worker(n: int) -> None:
            nonlocal events, errors
            i = 0
            while time.monotonic() < deadline:
                i += 1
                batch = [{"type": "track", "userId": f"batch-{n}-{j % 100}", "event": "purchase",
                          "properties": {"amount": 9.99}, "messageId": f"b{n}-{i}-{j}"} for j in range(batch_size)]
                started = time.perf_counter()
                async with session.post(f"{url}/api/batch", json={"batch": batch}, headers=AUTH) as response:
                    body = await response.json()
                    if response.status != 200:
                        errors += 1
                    else:
                        events += body["accepted"]
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    return {"rate": events / elapsed, "p50": percentile(latencies, 0.5) * 1000,
            "p99": percentile(latencies, 0.99) * 1000, "errors": errors, "count": events}


def shop_sections() -> dict:
    """The example project's segments, templates, campaigns and transactions (paths relative to the repository)."""
    example = yaml.safe_load((ROOT / "segflow.yaml").read_text(encoding="utf-8"))
    return {key: example[key] for key in ("segments", "templates", "campaigns", "transactions")}


async def measure(server, seconds: float, *, shop: bool) -> tuple[list, float]:
    """Start a daemon, run every load against it, and return the rows and its peak RSS.

    With `shop`, the daemon runs the example project: six segments evaluated
    per event, three campaigns and a receipt queued for every purchase.
    """
    with tempfile.TemporaryDirectory() as folder:
        config = {
            "database": {"url": server.raw, "pool_size": 32},
            "http": {"listen": "127.0.0.1:0", "api_keys": ["bench-key"], "secret": "bench-secret-value"},
            "email": {"from": "Bench <bench@example.test>", "outbox_dir": f"{folder}/outbox"},
        }
        if shop:
            config.update(shop_sections())
            # Relative paths and `flows.shop` resolve from the config's folder.
            (Path(folder) / "flows").symlink_to(ROOT / "flows")
        config_path = Path(folder) / "segflow.yaml"
        config_path.write_text(yaml.safe_dump(config))
        daemon = Daemon(config_path, log_path=Path(folder) / "segflowd.log")
        try:
            url = daemon.wait_ready()
            rows = []
            for clients in (1, 16, 64):
                result = await closed_loop(url, clients, seconds)
                rows.append((f"single events, {clients} client{'s' if clients > 1 else ''}", result))
            rows.append(("single events, steady 500/s", await open_loop(url, 500, seconds)))
            rows.append(("batches of 500, 4 clients", await batches(url, 4, 500, seconds)))
            return rows, peak_rss_mib(daemon.process.pid)
        finally:
            if daemon.process.poll() is None:
                daemon.terminate()
            daemon.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement, in seconds")
    parser.add_argument("--server", default=os.environ.get("SEGFLOW_TEST_SERVER", "mysql://root@127.0.0.1:3306/"),
                        help="database server URL without a database name")
    args = parser.parse_args()
    server = parse_database_url(args.server.rstrip("/") + "/" + DATABASE)
    await server_sql(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")

    ceiling_1 = await bare_commit_rate(server, 1, min(args.seconds, 5))
    ceiling_8 = await bare_commit_rate(server, 8, min(args.seconds, 5))
    await server_sql(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    bare_rows, bare_rss = await measure(server, args.seconds, shop=False)
    await server_sql(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    shop_rows, shop_rss = await measure(server, args.seconds, shop=True)
    await server_sql(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{args.seconds:g} s per row")
    print(f"bare INSERT+COMMIT ceiling in this run: {ceiling_1:,.0f}/s on 1 connection, {ceiling_8:,.0f}/s on 8\n")
    print("| config | load | events/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|")
    for config_name, rows in (("no segments", bare_rows), ("example shop", shop_rows)):
        for label, result in rows:
            print(f"| {config_name} | {label} | {result['rate']:,.0f} | {result['p50']:.1f} | {result['p99']:.1f} "
                  f"| {result['errors']} |")
    print(f"\ndaemon peak RSS: {bare_rss:.0f} MiB with no segments, {shop_rss:.0f} MiB with the example shop")


if __name__ == "__main__":
    asyncio.run(main())

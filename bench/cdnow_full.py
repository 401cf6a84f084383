"""Load the whole CDNOW file into a running segflowd that sends over SMTP to a local sink.

It starts Postfix's `smtp-sink` on 127.0.0.1 (Debian package postfix). It
starts `segflowd` on the example project (segflow.yaml), with the SMTP
provider pointed at the sink and the clock at 1998-07-01, the day after the
data ends. Then it loads the file with bench/load_cdnow.py. Then it waits until
every queued message is sent, and prints wall time, events/s, messages by
status, each segment's size and the daemon's peak RSS as a Markdown table.

    .venv/bin/python bench/cdnow_full.py [--customers N] [--max-per-second 2000]

The database (segflow_bench_cdnow) is dropped at the end; both servers are
stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncmy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import load_cdnow  # noqa: E402
from daemon_process import Daemon, free_port, peak_rss_mib  # noqa: E402

from segflowd.config import parse_database_url  # noqa: E402

DATABASE = "segflow_bench_cdnow"
SMTP_SINK = "/usr/sbin/smtp-sink"
API_KEY = "bench-key"


async def query(server, sql: str) -> list[tuple]:
    conn = await asyncmy.connect(host=server.host, port=server.port, user=server.user, password=server.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, help="load only customer ids 1 to N (default: all)")
    parser.add_argument("--max-per-second", type=int, default=2000, help="email.max_per_second for the run")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    parser.add_argument("--server", default=os.environ.get("SEGFLOW_TEST_SERVER", "mysql://root@127.0.0.1:3306/"),
                        help="database server URL without a database name")
    args = parser.parse_args()
    if not os.path.exists(SMTP_SINK):
        print(f"{SMTP_SINK} not found: install Debian's postfix package (no configuration)", file=sys.stderr)
        return 1
    server = parse_database_url(args.server.rstrip("/") + "/" + DATABASE)
    await query(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")

    smtp_port, http_port = free_port(), free_port()
    # -u runs the sink as the unprivileged user "nobody", -c counts deliveries,
    # and 1000 is the listen backlog.
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{smtp_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "SEGFLOW_DATABASE_URL": server.raw,
        "SEGFLOW_LISTEN": f"127.0.0.1:{http_port}",
        "SEGFLOW_API_KEY": API_KEY,
        "SEGFLOW_EMAIL_PROVIDER": "smtp",
        "SEGFLOW_SMTP_PORT": str(smtp_port),
        "SEGFLOW_MAX_PER_SECOND": str(args.max_per_second),
        "SEGFLOW_CLOCK_START": "1998-07-01T00:00:00Z",
    }
    purchases = load_cdnow.read_purchases(customers=args.customers)
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(ROOT / "segflow.yaml", env=env, log_path=Path(folder) / "segflowd.log")
        try:
            url = daemon.wait_ready(60)
            started = time.monotonic()
            summary = await load_cdnow.load(url, API_KEY, purchases, concurrency=args.concurrency, progress=True)
            load_seconds = time.monotonic() - started
            while True:
                (queued,), = await query(server, f"SELECT COUNT(*) FROM `{DATABASE}`.messages WHERE status = 'queued'")
                if queued == 0:
                    break
                await asyncio.sleep(1)
            drain_seconds = time.monotonic() - started
            await asyncio.sleep(2)
            statuses = await query(server, f"SELECT status, COUNT(*) FROM `{DATABASE}`.messages GROUP BY status")
            kinds = await query(server, f"SELECT template, COUNT(*) FROM `{DATABASE}`.messages GROUP BY template ORDER BY template")
            sizes = await query(server, f"SELECT segment, COUNT(*) FROM `{DATABASE}`.segment_members GROUP BY segment ORDER BY segment")
            runs = await query(server, f"SELECT campaign, status, COUNT(*) FROM `{DATABASE}`.campaign_runs GROUP BY campaign, status ORDER BY campaign, status")
            (events,), = await query(server, f"SELECT COUNT(*) FROM `{DATABASE}`.events")
            (duplicate_keys,), = await query(server, f"SELECT COUNT(*) - COUNT(DISTINCT message_key) FROM `{DATABASE}`.messages")
            rss = peak_rss_mib(daemon.process.pid)
            errors = [line for line in daemon.output().splitlines() if " ERROR " in line]
        finally:
            if daemon.process.poll() is None:
                daemon.terminate()
            daemon.kill()
            sink.terminate()
            sink.wait(10)
    await query(server, f"DROP DATABASE IF EXISTS `{DATABASE}`")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"calls sent: {summary.sent:,}; accepted {summary.accepted:,}, duplicates {summary.duplicate:,}, "
          f"rejected {summary.rejected:,}; events stored: {events:,} of {len(purchases):,} purchases\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| load wall time | {load_seconds:.1f} s |")
    print(f"| calls/s | {summary.sent / load_seconds:,.0f} |")
    print(f"| purchase events/s | {len(purchases) / load_seconds:,.0f} |")
    print(f"| load start to last message sent | {drain_seconds:.1f} s |")
    for status, count in statuses:
        print(f"| messages {status} | {count:,} |")
    print(f"| duplicate message keys | {duplicate_keys} |")
    print(f"| daemon peak RSS | {rss:.0f} MiB |")
    print("\n| template | messages |\n|---|---:|")
    for template, count in kinds:
        print(f"| {template} | {count:,} |")
    print("\n| segment | members |\n|---|---:|")
    for segment, count in sizes:
        print(f"| {segment} | {count:,} |")
    print("\n| campaign | status | runs |\n|---|---|---:|")
    for campaign, status, count in runs:
        print(f"| {campaign} | {status} | {count:,} |")
    if errors:
        print(f"\n{len(errors)} ERROR lines in the daemon's log; first: {errors[0]}")
    return 0 if summary.rejected == 0 and events == len(purchases) and duplicate_keys == 0 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

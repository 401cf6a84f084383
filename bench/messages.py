"""Measure email delivery: messages per second over SMTP, and transactional POST-to-inbox latency.

Three measurements, each on a database of its own (segflow_bench_messages,
dropped at the end):

- compose: render a template and build the MIME bytes, in a loop, with no
  database or network, to show how much of a send is CPU.
- wire: aiosmtplib sending one pre-built message N times over the same
  number of connections to smtp-sink, with no database and no rendering:
  the ceiling that the throughput figure can be compared with.
- throughput: queue N campaign messages, then time MessageService (claim,
  render, build, SMTP, record) draining them to a local sink: Postfix's
  `smtp-sink` when it is installed, and aiosmtpd in this process.
- latency: start `segflowd --config` as a child process with the SMTP
  provider and POST purchase events at a fixed rate (open loop). Each one
  is timed from the start of its POST to the end of DATA at an aiosmtpd
  sink in this process, and the run prints p50, p90, p99 and max.

    .venv/bin/python bench/messages.py [--messages 5000] [--workers 8] [--rate 200] [--seconds 15]

Every server listens on 127.0.0.1 and is stopped by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncmy
import yaml
from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parent.parent
from segflowd.clock import Clock  # noqa: E402
from segflowd.config import load_config, parse_database_url  # noqa: E402
from segflowd.db import Database, apply_schema  # noqa: E402
from segflowd.messages.check import sample_user  # noqa: E402
from segflowd.messages.compose import ComposedMessage, parse_address, parse_sender  # noqa: E402
from segflowd.messages.queue import campaign_message_key, message_context, queue_message  # noqa: E402
from segflowd.messages.service import MessageService  # noqa: E402
from segflowd.messages.templates import Templates  # noqa: E402
from segflowd.users import upsert_user  # noqa: E402

DATABASE = "segflow_bench_messages"
SMTP_SINK = "/usr/sbin/smtp-sink"
AUTH = {"Authorization": "Bearer bench-key"}

RECEIPT_HTML = """\
{% extends "_layout.html.j2" %}
{% block body %}
<p>Hi {{ user.name }},</p>
<p>Thanks for your order {{ event.attributes.order }}. Here is your receipt.</p>
<table role="presentation" cellpadding="6">
  <tr><td>Order</td><td>#{{ event.id }}</td></tr>
  <tr><td>CDs</td><td>{{ event.attributes.cds }}</td></tr>
  <tr><td><strong>Total</strong></td><td><strong>${{ '%.2f' | format(event.attributes.amount) }}</strong></td></tr>
</table>
{% endblock %}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_project(folder: Path, server_url: str, smtp_port: int, *, workers: int, pool_size: int, port: int = 0) -> Path:
    """Write a config with the example shop's layout, a welcome and a receipt template, sending to `smtp_port`."""
    templates = folder / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "flows/templates/_layout.html.j2", templates / "_layout.html.j2")
    shutil.copy(ROOT / "flows/templates/welcome.html.j2", templates / "welcome.html.j2")
    shutil.copy(ROOT / "flows/templates/welcome.txt.j2", templates / "welcome.txt.j2")
    (templates / "receipt.html.j2").write_text(RECEIPT_HTML)
    config = {
        "database": {"url": server_url.rstrip("/") + "/" + DATABASE, "pool_size": 16},
        "http": {"listen": f"127.0.0.1:{port}", "public_url": "http://127.0.0.1:8080",
                 "api_keys": ["bench-key"], "secret": "bench-secret-value"},
        "email": {
            "from": "CD Corner <hello@cdcorner.example.test>",
            "provider": "smtp",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "pool_size": pool_size},
            "max_per_second": 100000,
            "workers": workers,
        },
        "templates": {
            "welcome": {"subject": "Welcome to CD Corner, {{ user.name }}!", "html": "templates/welcome.html.j2",
                        "text": "templates/welcome.txt.j2"},
            "receipt": {"subject": "Receipt {{ event.attributes.order }}", "html": "templates/receipt.html.j2"},
        },
        "transactions": {"receipt": {"event": "purchase", "template": "receipt"}},
        "logging": {"level": "INFO"},
    }
    path = folder / "segflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def server_sql(server_url: str, statement: str) -> None:
    server = parse_database_url(server_url.rstrip("/") + "/mysql")
    conn = await asyncmy.connect(host=server.host, port=server.port, user=server.user, password=server.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


async def fresh_database(server_url: str) -> None:
    await server_sql(server_url, f"DROP DATABASE IF EXISTS `{DATABASE}`")
    await server_sql(server_url, f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    await apply_schema(parse_database_url(server_url.rstrip("/") + "/" + DATABASE))


# --- compose ------------------------------------------------------------------------


def measure_compose(config_path: Path, count: int) -> dict[str, float]:
    """Render the welcome template and build MIME bytes `count` times; return messages per second."""
    config = load_config(config_path, extend_sys_path=False)
    templates = Templates(config)
    sender = parse_sender(config.email.from_address)
    recipient = parse_address("ana@example.test", display_name="Ana Müller")
    context = {"user": {**sample_user(), "name": "Ana Müller"}, "event": None, "campaign": "welcome",
               "unsubscribe_url": "http://127.0.0.1:8080/unsubscribe/dTE.abc"}
    started = time.perf_counter()
    render_seconds = 0.0
    for _ in range(count):
        render_started = time.perf_counter()
        rendered = templates.render("welcome", context)
        render_seconds += time.perf_counter() - render_started
        ComposedMessage(sender, recipient, rendered.subject, rendered.html, rendered.text, datetime(2026, 1, 1),
                        "<x@cdcorner.example.test>", context["unsubscribe_url"]).as_bytes()
    elapsed = time.perf_counter() - started
    return {"per_second": count / elapsed, "render_share": render_seconds / elapsed}


# --- throughput ---------------------------------------------------------------------


async def queue_campaign_messages(db: Database, count: int) -> None:
    now = Clock().now()
    for start in range(0, count, 500):
        async with db.transaction() as cur:
            for i in range(start, min(count, start + 500)):
                user = {"id": f"u{i}", "email": f"u{i}@example.test", "name": f"User {i}"}
                await upsert_user(cur, user["id"], {"email": user["email"], "name": user["name"]}, now)
                await queue_message(
                    cur, key=campaign_message_key(i, 0), kind="campaign", user_id=user["id"], template="welcome",
                    context=message_context(user, campaign="welcome"), now=now, campaign="welcome", run_id=i,
                )


async def drain(config_path: Path, server_url: str, count: int) -> float:
    """Queue `count` messages and return messages per second for MessageService to send them all."""
    await fresh_database(server_url)
    config = load_config(config_path, extend_sys_path=False)
    db = Database(config.database.url, pool_size=config.database.pool_size)
    await db.open()
    try:
        await queue_campaign_messages(db, count)
        service = MessageService(config, db, Clock())
        started = time.perf_counter()
        await service.start()
        while True:
            row = await db.fetch_one("SELECT COUNT(*) AS n FROM messages WHERE status = 'queued'")
            if row["n"] == 0:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        await service.stop()
        sent = await db.fetch_one("SELECT COUNT(*) AS n FROM messages WHERE status = 'sent'")
        if sent["n"] != count:
            raise RuntimeError(f"expected {count} sent messages, found {sent['n']}")
        return count / elapsed
    finally:
        await db.close()


class CountingHandler:
    def __init__(self) -> None:
        self.received = 0
        self.arrivals: dict[str, float] = {}

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.received += 1
        match = re.search(rb"^Subject: Receipt (\S+)\r?$", envelope.content, re.MULTILINE)
        if match:
            self.arrivals[match.group(1).decode()] = time.perf_counter()
        return "250 2.0.0 Ok"


async def start_aiosmtpd(handler: CountingHandler) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink.bench"), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def send_prebuilt(port: int, count: int, connections: int) -> float:
    """Send one pre-built message `count` times over `connections` aiosmtplib connections; return messages/s."""
    import aiosmtplib

    message = ComposedMessage(parse_sender("CD Corner <hello@cdcorner.example.test>"),
                              parse_address("ana@example.test", display_name="Ana"), "Welcome",
                              "<p>Hi Ana</p>" * 40, "Hi Ana\n" * 40, datetime(2026, 1, 1), "<x@cdcorner.example.test>",
                              "http://127.0.0.1:8080/unsubscribe/dTE.abc").as_bytes()

    async def one_connection(share: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for _ in range(share):
            await client.sendmail("hello@cdcorner.example.test", ["ana@example.test"], message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection(count // connections) for _ in range(connections)))
    return (count // connections * connections) / (time.perf_counter() - started)


async def measure_throughput(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    results = {}
    if os.path.exists(SMTP_SINK):
        port = free_port()
        # smtp-sink: -u drops root to nobody, -c counts deliveries, 1000 is the listen backlog.
        sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.3)
            results["smtp-sink, pre-built bytes, no database (wire)"] = await send_prebuilt(
                port, args.messages, args.pool_size)
            config_path = write_project(folder / "sink", args.server, port, workers=args.workers, pool_size=args.pool_size)
            results["smtp-sink"] = await drain(config_path, args.server, args.messages)
        finally:
            sink.terminate()
            sink.wait(10)
    else:
        print(f"note: {SMTP_SINK} not found; install Debian's postfix package for the smtp-sink figure", file=sys.stderr)

    handler = CountingHandler()
    server, port = await start_aiosmtpd(handler)
    try:
        config_path = write_project(folder / "aiosmtpd", args.server, port, workers=args.workers, pool_size=args.pool_size)
        results["aiosmtpd"] = await drain(config_path, args.server, args.messages)
    finally:
        server.close()
    return results


# --- latency --------------------------------------------------------------------------


async def measure_latency(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Drive a segflowd child process with purchase events at `args.rate` per second."""
    await fresh_database(args.server)
    handler = CountingHandler()
    server, smtp_port = await start_aiosmtpd(handler)
    config_path = write_project(folder / "daemon", args.server, smtp_port, workers=args.workers,
                                pool_size=args.pool_size, port=free_port())
    # The daemon logs to a file: reading its output here would take the GIL
    # from the sink and skew the arrival times.
    log_path = folder / "daemon.log"
    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "segflowd", "--config", str(config_path)],
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = await wait_listening(daemon, log_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            users = [{"type": "identify", "userId": f"u{i}",
                      "traits": {"email": f"u{i}@example.test", "name": f"User {i}"}} for i in range(args.users)]
            async with http.post(f"{url}/api/batch", json={"batch": users}, headers=AUTH) as response:
                assert response.status == 200, await response.text()

            total = int(args.rate * args.seconds)
            sent_at: dict[str, float] = {}
            answered_at: dict[str, float] = {}
            answered: list[float] = []
            errors: list[str] = []

            async def post(i: int, at: float) -> None:
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                order = f"o{i}"
                started = time.perf_counter()
                sent_at[order] = started
                body = {"attributes": {"order": order, "cds": 1 + i % 3, "amount": 9.99 + i % 50}}
                async with http.post(f"{url}/api/user/u{i % args.users}/event/purchase", json=body,
                                     headers=AUTH) as response:
                    if response.status >= 300:
                        errors.append(f"{response.status} {await response.text()}")
                    answered_at[order] = time.perf_counter()
                    answered.append(answered_at[order] - started)

            origin = time.perf_counter() + 0.5
            await asyncio.gather(*(post(i, origin + i / args.rate) for i in range(total)))
            deadline = time.perf_counter() + 30
            while len(handler.arrivals) < total and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
        latencies = [handler.arrivals[order] - sent_at[order] for order in sent_at if order in handler.arrivals]
        after_answer = [handler.arrivals[order] - answered_at[order] for order in answered_at if order in handler.arrivals]
        cpu_seconds = daemon_cpu_seconds(daemon.pid)
        # When the slow messages were posted: one stall shows as a cluster.
        slow = sorted(sent_at[order] - origin for order in sent_at
                      if order in handler.arrivals and handler.arrivals[order] - sent_at[order] > 0.1)
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(log_path, os.environ["BENCH_KEEP_LOG"])
        return {
            "events": total,
            "delivered": len(latencies),
            "errors": len(errors),
            "first_error": errors[0] if errors else "",
            "p50_ms": 1000 * percentile(latencies, 0.50),
            "p90_ms": 1000 * percentile(latencies, 0.90),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "max_ms": 1000 * max(latencies),
            "mean_ms": 1000 * statistics.fmean(latencies),
            "http_p50_ms": 1000 * percentile(answered, 0.50),
            "http_p99_ms": 1000 * percentile(answered, 0.99),
            "after_answer_p50_ms": 1000 * percentile(after_answer, 0.50),
            "after_answer_p99_ms": 1000 * percentile(after_answer, 0.99),
            "daemon_cpu_seconds": cpu_seconds,
            "slow_count": len(slow),
            "slow_window": (slow[0], slow[-1]) if slow else None,
        }
    finally:
        daemon.terminate()
        daemon.wait(60)
        server.close()


async def wait_listening(daemon: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> str:
    """Wait for the daemon's "listening on" line; return its base URL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://[0-9.]+:\d+)", log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if daemon.poll() is not None:
            break
        await asyncio.sleep(0.1)
    daemon.kill()
    raise RuntimeError("segflowd did not start:\n" + log_path.read_text(errors="replace"))


def daemon_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- main -----------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    # The server replies to DROP DATABASE IF EXISTS with a note that the driver logs as a warning.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)
    print(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="segflow-bench-messages-") as tmp:
        folder = Path(tmp)
        try:
            if "compose" in args.parts:
                config_path = write_project(folder / "compose", args.server, 25, workers=1, pool_size=1)
                compose = measure_compose(config_path, 2000)
                print(f"\ncompose (render + MIME bytes, one core): {compose['per_second']:.0f} messages/s, "
                      f"rendering {100 * compose['render_share']:.0f}% of the time")
            if "throughput" in args.parts:
                results = await measure_throughput(args, folder)
                print(f"\nthroughput: {args.messages} campaign messages, {args.workers} workers, "
                      f"{args.pool_size} SMTP connections")
                print("| sink | messages/s |\n|---|---|")
                for sink, rate in results.items():
                    print(f"| {sink} | {rate:.0f} |")
            if "latency" in args.parts:
                result = await measure_latency(args, folder)
                print(f"\nlatency: POST /api/user/{{id}}/event/purchase at {args.rate}/s for {args.seconds} s, "
                      "to the end of DATA at aiosmtpd")
                print("| events | delivered | HTTP errors | p50 | p90 | p99 | max | HTTP p50 | HTTP p99 |")
                print("|---|---|---|---|---|---|---|---|---|")
                print(f"| {result['events']} | {result['delivered']} | {result['errors']} | "
                      f"{result['p50_ms']:.1f} ms | {result['p90_ms']:.1f} ms | {result['p99_ms']:.1f} ms | "
                      f"{result['max_ms']:.1f} ms | {result['http_p50_ms']:.1f} ms | {result['http_p99_ms']:.1f} ms |")
                print(f"after the HTTP answer: p50 {result['after_answer_p50_ms']:.1f} ms, "
                      f"p99 {result['after_answer_p99_ms']:.1f} ms; daemon CPU {result['daemon_cpu_seconds']:.1f} s "
                      f"for the whole run")
                if result["slow_window"]:
                    first, last = result["slow_window"]
                    print(f"{result['slow_count']} messages took over 100 ms; they were posted between "
                          f"{first:.2f} s and {last:.2f} s into the run")
                if result["first_error"]:
                    print(f"first HTTP error: {result['first_error']}")
        finally:
            await server_sql(args.server, f"DROP DATABASE IF EXISTS `{DATABASE}`")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="mysql://root@127.0.0.1:3306/", help="database server URL")
    parser.add_argument("--messages", type=int, default=5000, help="campaign messages per throughput run")
    parser.add_argument("--workers", type=int, default=8, help="email.workers (sender tasks)")
    parser.add_argument("--pool-size", type=int, default=8, help="email.smtp.pool_size (SMTP connections)")
    parser.add_argument("--rate", type=float, default=200, help="purchase events per second in the latency run")
    parser.add_argument("--seconds", type=float, default=15, help="length of the latency run")
    parser.add_argument("--users", type=int, default=500, help="distinct users in the latency run")
    parser.add_argument("--parts", nargs="+", default=["compose", "throughput", "latency"],
                        choices=["compose", "throughput", "latency"], help="which measurements to run")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

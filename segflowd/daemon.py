"""`segflowd --config FILE`: check, migrate, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from segflowd.clock import Clock, clock_for
from segflowd.config import Config
from segflowd.db import Database, DatabaseUnavailable, apply_schema, ensure_database
from segflowd.http.app import build_app
from segflowd.logs import setup_logging
from segflowd.services import Services

log = logging.getLogger(__name__)

# How long SIGTERM waits for requests in flight before closing connections.
SHUTDOWN_TIMEOUT_SECONDS = 30.0


def offline_errors(config: Config) -> list[str]:
    """Everything `segflowd check --offline` finds: segment SQL, flows, templates."""
    from segflowd.campaigns.check import check_flows
    from segflowd.messages.check import check_templates
    from segflowd.segments.check import check_segments

    segment_errors, _notes = asyncio.run(check_segments(config, None))
    return segment_errors + check_flows(config) + check_templates(config)


async def serve(config: Config, clock: Clock, stop: asyncio.Event) -> None:
    """Create the database if needed, apply the schema, and serve until `stop` is set."""
    await ensure_database(config.database.url)
    await apply_schema(config.database.url)
    db = Database(config.database.url, pool_size=config.database.pool_size)
    await db.open()
    services = Services.build(config, db, clock)
    runner = web.AppRunner(build_app(services), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.http.host, config.http.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        log.info(
            f"listening on http://{host}:{port}",
            extra={"action": "listen", "host": host, "port": port, "database": config.database.url.redacted(),
                   "email_provider": config.email.provider, "clock": clock.now().isoformat(timespec="seconds")},
        )
        await stop.wait()
        log.info("stopping: finishing requests and steps in hand", extra={"action": "stop"})
    finally:
        # Stops accepting, waits for handlers in flight, then runs the
        # application's cleanup, which stops the background tasks.
        await runner.cleanup()
        await db.close()
    log.info("stopped", extra={"action": "stopped"})


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(config, clock_for(config.clock.start), stop)


def _run(main: Any) -> None:
    """Run the daemon's event loop: uvloop where it is installed, else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def run_daemon(config: Config) -> int:
    setup_logging(config.logging.level, config.logging.format)
    errors = offline_errors(config)
    if errors:
        print(f"segflowd: {config.path}: {len(errors)} error{'s' if len(errors) != 1 else ''}; nothing was started:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    try:
        _run(_main(config))
    except DatabaseUnavailable as exc:
        print(f"segflowd: {exc}", file=sys.stderr)
        return 1
    return 0

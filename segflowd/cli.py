"""The `segflowd` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from typing import Sequence

from segflowd import __version__
from segflowd.config import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segflowd",
        description="Self-hosted customer messaging daemon: SQL segments, Python flows, email.",
    )
    parser.add_argument("--version", action="version", version=f"segflowd {__version__}")
    parser.add_argument("--config", help="path to segflow.yaml (runs the daemon when no command is given)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", required=True, help="path to segflow.yaml")
        return sub

    add("run", "run the daemon: HTTP API, scheduler, segment refresher and delivery")
    check = add("check", "validate config, segment SQL, flows and templates without writing anything")
    check.add_argument("--offline", action="store_true", help="skip the checks that need the database")
    segment = add("segment", "count the users in a segment and list some of their ids")
    segment.add_argument("name", help="segment name from the config")
    segment.add_argument("--at", help="evaluate as of this ISO-8601 time instead of now (UTC if no offset)")
    segment.add_argument("--limit", type=int, default=20, help="how many ids to print (default 20)")
    render = add("render", "render a template for one user and print the message")
    render.add_argument("template", help="template name from the config")
    render.add_argument("--user", required=True, help="id of the user to render for")
    add("status", "show runs per campaign and status, steps due, and messages by status")
    add("check-db", "check that the configured database server answers")
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"segflowd: invalid config ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def parse_at(value: str | None) -> datetime | None:
    """Parse `--at`: ISO-8601, naive means UTC."""
    if value is None:
        return None
    from segflowd.timestamps import parse_timestamp

    return parse_timestamp(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if not args.config:
        print("segflowd: --config is required, as in: segflowd --config segflow.yaml", file=sys.stderr)
        return 2
    config = _load(args.config)
    if config is None:
        return 1

    if command == "run":
        from segflowd.daemon import run_daemon

        return run_daemon(config)
    if command == "check":
        from segflowd.commands import check_command

        return asyncio.run(check_command(config, offline=args.offline))
    if command == "check-db":
        from segflowd.commands import check_db_command

        return asyncio.run(check_db_command(config))
    if command == "segment":
        from segflowd.commands import segment_command

        return asyncio.run(segment_command(config, args.name, at=parse_at(args.at), limit=args.limit))
    if command == "render":
        from segflowd.commands import render_command

        return asyncio.run(render_command(config, args.template, args.user))
    if command == "status":
        from segflowd.commands import status_command

        return asyncio.run(status_command(config))
    raise AssertionError(f"unhandled command {command}")

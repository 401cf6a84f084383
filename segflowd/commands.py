"""The one-shot CLI commands: check, check-db, segment, render, status."""

from __future__ import annotations

import sys
from datetime import datetime

from segflowd.clock import clock_for
from segflowd.config import Config
from segflowd.db import Database, DatabaseUnavailable


async def _open_existing(config: Config) -> Database | None:
    """Open the configured database without creating or changing anything."""
    db = Database(config.database.url, pool_size=2)
    try:
        await db.open()
    except DatabaseUnavailable as exc:
        print(f"segflowd: {exc}", file=sys.stderr)
        return None
    return db


async def check_command(config: Config, *, offline: bool = False) -> int:
    """Validate everything and print every error, or a summary; write nothing."""
    from segflowd.campaigns.check import check_flows
    from segflowd.messages.check import check_templates
    from segflowd.segments.check import check_segments

    errors: list[str] = []
    notes: list[str] = []
    db = None if offline else await _open_existing(config)
    if db is None and not offline:
        notes.append("database checks skipped: see the database message on standard error")
    try:
        segment_errors, segment_notes = await check_segments(config, db)
    finally:
        if db is not None:
            await db.close()
    errors += segment_errors
    notes += segment_notes
    errors += check_flows(config)
    errors += check_templates(config)

    for note in notes:
        print(f"note: {note}")
    if errors:
        print(f"{config.path}: {len(errors)} error{'s' if len(errors) != 1 else ''}:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(
        f"{config.path}: OK: {len(config.segments)} segments, {len(config.templates)} templates, "
        f"{len(config.campaigns)} campaigns, {len(config.transactions)} transactions; "
        f"email provider {config.email.provider}"
    )
    return 0


async def check_db_command(config: Config) -> int:
    """Return 0 if the database server is reachable, else print which URL failed and how to fix it."""
    from segflowd.db import ensure_database

    try:
        await ensure_database(config.database.url)
    except DatabaseUnavailable as exc:
        print(f"segflowd: {exc}", file=sys.stderr)
        return 1
    print(f"database {config.database.url.redacted()} answers")
    return 0


async def segment_command(config: Config, name: str, *, at: datetime | None, limit: int) -> int:
    from segflowd.segments.cli import print_segment

    db = await _open_existing(config)
    if db is None:
        return 1
    try:
        return await print_segment(config, db, name, at=at, limit=limit, clock=clock_for(config.clock.start))
    finally:
        await db.close()


async def render_command(config: Config, template: str, user_id: str) -> int:
    from segflowd.messages.cli import print_rendered

    db = await _open_existing(config)
    if db is None:
        return 1
    try:
        return await print_rendered(config, db, template, user_id)
    finally:
        await db.close()


async def status_command(config: Config) -> int:
    from segflowd.campaigns.cli import print_status

    db = await _open_existing(config)
    if db is None:
        return 1
    try:
        return await print_status(config, db, clock_for(config.clock.start))
    finally:
        await db.close()

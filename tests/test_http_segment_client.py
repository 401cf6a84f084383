"""Segment's official Python library sends to segflowd unmodified."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

from segment.analytics.client import Client


def send_with_segment_library(host: str, *, gzip: bool, message_id: str | None = None) -> list[str]:
    """Send identify and track calls with the library; return the errors it reported."""
    errors: list[str] = []
    # `host` is set in the constructor, before any call, so the library never
    # contacts its default cloud endpoint.
    client = Client(
        write_key="test-key",
        host=host,
        sync_mode=True,
        gzip=gzip,
        max_retries=0,
        on_error=lambda error, _items: errors.append(repr(error)),
    )
    client.identify("lib-user", {"email": "lib@example.test", "name": "Lib User"})
    client.track(
        "lib-user",
        "Order Completed",
        {"total": 19.99, "currency": "USD"},
        timestamp=datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc),
        message_id=message_id,
    )
    client.flush()
    return errors


async def test_segment_library_lands_as_users_and_events(api, db):
    client, _ = await api()
    host = str(client.make_url("")).rstrip("/")
    assert host.startswith("http://127.0.0.1:")
    errors = await asyncio.get_running_loop().run_in_executor(None, lambda: send_with_segment_library(host, gzip=False))
    assert errors == []
    user = await db.fetch_one("SELECT attributes FROM users WHERE id = 'lib-user'")
    assert json.loads(user["attributes"]) == {"email": "lib@example.test", "name": "Lib User"}
    event = await db.fetch_one("SELECT name, attributes, created_at FROM events WHERE user_id = 'lib-user'")
    assert event["name"] == "Order Completed"
    assert json.loads(event["attributes"]) == {"total": 19.99, "currency": "USD"}
    assert event["created_at"] == datetime(2026, 3, 29, 1, 30)


async def test_segment_library_gzip_bodies(api, db):
    client, _ = await api()
    host = str(client.make_url("")).rstrip("/")
    errors = await asyncio.get_running_loop().run_in_executor(None, lambda: send_with_segment_library(host, gzip=True))
    assert errors == []
    row = await db.fetch_one("SELECT COUNT(*) AS n FROM events WHERE user_id = 'lib-user'")
    assert row["n"] == 1


async def test_segment_library_retry_stores_once(api, db):
    """The library's messageId is the idempotency key: a resent batch stores nothing twice."""
    client, _ = await api()
    host = str(client.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    for _ in range(2):
        errors = await loop.run_in_executor(
            None, lambda: send_with_segment_library(host, gzip=False, message_id="order-7")
        )
        assert errors == []
    row = await db.fetch_one("SELECT COUNT(*) AS n FROM events WHERE user_id = 'lib-user'")
    assert row["n"] == 1

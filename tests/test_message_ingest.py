"""Transactional mail from HTTP ingest: queued with the event, delivered at once, never twice."""

from __future__ import annotations

import asyncio

import pytest

from segflowd.http.app import build_app
from segflowd.services import Services
from test_message_support import clock, make_config, message_row, smtp_email, smtp_sink  # noqa: F401 - fixtures

AUTH = {"Authorization": "Bearer test-key"}


async def wait_for_status(db, key, timeout=10.0):
    """The message's status once it has left `queued` (the sink sees a message before its row is updated)."""

    async def settled():
        while (status := (await message_row(db, key))["status"]) == "queued":
            await asyncio.sleep(0.01)
        return status

    return await asyncio.wait_for(settled(), timeout)


@pytest.fixture
async def client(aiohttp_client, db, clock, make_config, smtp_sink):
    # A poll interval of an hour: only the wake after the commit can deliver in time.
    config = make_config(email=smtp_email(smtp_sink), scheduler={"poll_interval": "1h"})
    services = Services.build(config, db, clock)
    return await aiohttp_client(build_app(services, run_background=True))


async def test_event_post_delivers_receipt(client, db, smtp_sink):
    await client.post("/api/user/u1", json={"attributes": {"email": "ana@example.test", "name": "Ana"}}, headers=AUTH)

    response = await client.post(
        "/api/user/u1/event/purchase", json={"attributes": {"order": "A-1", "total": 9.5}}, headers=AUTH
    )
    assert response.status in (200, 201)
    body = await response.json()
    assert body["messages"] == [f"transaction:order-receipt:{body['event_id']}"]

    [received] = await smtp_sink.wait_for(1)
    assert received.rcpt_tos == ["ana@example.test"]
    assert received.message["Subject"] == "Receipt for order A-1"
    assert await wait_for_status(db, body["messages"][0]) == "sent"


async def test_retried_post_sends_once(client, db, smtp_sink):
    await client.post("/api/user/u1", json={"attributes": {"email": "ana@example.test", "name": "Ana"}}, headers=AUTH)
    headers = {**AUTH, "Idempotency-Key": "order-A-2"}

    first = await client.post("/api/user/u1/event/purchase", json={"attributes": {"order": "A-2", "total": 1}}, headers=headers)
    await smtp_sink.wait_for(1)
    second = await client.post("/api/user/u1/event/purchase", json={"attributes": {"order": "A-2", "total": 1}}, headers=headers)

    assert (await first.json())["event_id"] == (await second.json())["event_id"]
    rows = await db.fetch_all("SELECT message_key FROM messages")
    assert len(rows) == 1
    assert await wait_for_status(db, rows[0]["message_key"]) == "sent"
    assert smtp_sink.handler.data_commands == 1


async def test_batch_track_queues_each_receipt(client, db, smtp_sink):
    batch = {
        "batch": [
            {"type": "identify", "userId": "u1", "traits": {"email": "ana@example.test", "name": "Ana"}},
            {"type": "track", "userId": "u1", "event": "purchase", "properties": {"order": "B-1", "total": 1}},
            {"type": "track", "userId": "u1", "event": "purchase", "properties": {"order": "B-2", "total": 2}},
            {"type": "track", "userId": "u1", "event": "page_view", "properties": {}},
        ]
    }
    response = await client.post("/api/batch", json=batch, headers=AUTH)
    assert response.status == 200

    received = await smtp_sink.wait_for(2)
    assert sorted(r.message["Subject"] for r in received) == ["Receipt for order B-1", "Receipt for order B-2"]

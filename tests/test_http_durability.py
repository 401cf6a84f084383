"""Every 2xx is in the database; every rejected request left nothing, under concurrency."""

from __future__ import annotations

import asyncio
import json
import random

from conftest import AUTH

CLIENTS = 64
REQUESTS_PER_CLIENT = 12


async def test_concurrent_clients_lose_nothing(api, db):
    client, _ = await api()
    accepted: dict[int, tuple[str, str, dict]] = {}
    rejected_markers: list[str] = []
    statuses: list[int] = []

    async def one_client(number: int) -> None:
        rng = random.Random(number)
        for i in range(REQUESTS_PER_CLIENT):
            # Few users, so that concurrent requests contend for the same rows.
            user_id = f"user-{rng.randrange(8)}"
            marker = f"c{number}-r{i}"
            kind = rng.random()
            if kind < 0.2:
                # Invalid: attributes is not an object. Must leave nothing.
                body = json.dumps({"attributes": [marker]})
                rejected_markers.append(marker)
            elif kind < 0.3:
                body = json.dumps({"attributes": {"marker": marker}, "timestamp": "not a time"})
                rejected_markers.append(marker)
            else:
                body = json.dumps({"attributes": {"marker": marker}})
            headers = {**AUTH, "Content-Type": "application/json"}
            if rng.random() < 0.3:
                headers["Idempotency-Key"] = marker
            response = await client.post(f"/api/user/{user_id}/event/click", data=body, headers=headers)
            statuses.append(response.status)
            payload = await response.json()
            if response.status == 201:
                accepted[payload["event_id"]] = (user_id, marker, payload)

    await asyncio.gather(*(one_client(n) for n in range(CLIENTS)))

    assert all(status in (201, 422) for status in statuses), sorted(set(statuses))
    rows = await db.fetch_all("SELECT id, user_id, attributes FROM events")
    stored = {row["id"]: (row["user_id"], json.loads(row["attributes"])["marker"]) for row in rows}
    assert len(accepted) == CLIENTS * REQUESTS_PER_CLIENT - len(rejected_markers)
    for event_id, (user_id, marker, _payload) in accepted.items():
        assert stored[event_id] == (user_id, marker)
    assert len(stored) == len(accepted)
    stored_markers = {marker for _user, marker in stored.values()}
    assert not stored_markers & set(rejected_markers)


async def test_concurrent_retries_with_one_key_store_one_event(api, db):
    client, _ = await api()
    headers = {**AUTH, "Idempotency-Key": "same-order"}

    async def send() -> dict:
        response = await client.post("/api/user/u1/event/purchase", json={"attributes": {"amount": 3}}, headers=headers)
        assert response.status == 201
        return await response.json()

    answers = await asyncio.gather(*(send() for _ in range(32)))
    assert len({answer["event_id"] for answer in answers}) == 1
    row = await db.fetch_one("SELECT COUNT(*) AS n FROM events")
    assert row["n"] == 1


async def test_concurrent_batches_lose_nothing(api, db):
    client, _ = await api()

    async def send(batch_number: int) -> dict:
        batch = []
        for i in range(50):
            user_id = f"user-{(batch_number + i) % 10}"
            batch.append({"type": "identify", "userId": user_id, "traits": {f"b{batch_number}": i}})
            batch.append({"type": "track", "userId": user_id, "event": "view", "messageId": f"b{batch_number}-{i}",
                          "properties": {"i": i}})
        response = await client.post("/api/batch", json={"batch": batch}, headers=AUTH)
        assert response.status == 200
        return await response.json()

    answers = await asyncio.gather(*(send(n) for n in range(16)))
    assert all(answer["accepted"] == 100 for answer in answers)
    row = await db.fetch_one("SELECT COUNT(*) AS n FROM events")
    assert row["n"] == 16 * 50


SEGMENTS = {
    "everyone": {"sql": "SELECT id FROM users"},
    "repeat": {"sql": "SELECT user_id AS id FROM events WHERE name = 'purchase' GROUP BY user_id HAVING COUNT(*) >= 2"},
}


async def test_event_creating_user_enters_user_only_segments(api, db):
    client, _ = await api({"segments": SEGMENTS})
    response = await client.post("/api/user/fresh/event/purchase", json={}, headers=AUTH)
    assert (await response.json())["segments"]["entered"] == ["everyone"]
    batch = [{"type": "track", "userId": "fresh-2", "event": "purchase"}]
    body = await (await client.post("/api/batch", json={"batch": batch}, headers=AUTH)).json()
    assert body["results"][0]["segments"]["entered"] == ["everyone"]


async def test_concurrent_events_for_one_user_see_each_other(api, db):
    """Two purchases at once for one user: the second to commit must count both."""
    client, _ = await api({"segments": SEGMENTS})

    async def purchase(user_id: str) -> None:
        response = await client.post(f"/api/user/{user_id}/event/purchase", json={}, headers=AUTH)
        assert response.status == 201

    users = [f"pair-{i}" for i in range(20)]
    # Existing users: a new row is locked by its insert, an existing one only
    # if the request locks it.
    for user_id in users:
        await client.post(f"/api/user/{user_id}", json={}, headers=AUTH)
    await asyncio.gather(*(purchase(u) for u in users for _ in range(2)))
    rows = await db.fetch_all("SELECT user_id FROM segment_members WHERE segment = 'repeat'")
    assert {row["user_id"] for row in rows} == set(users)


async def test_request_without_new_work_leaves_loops_asleep(api):
    """Waking delivery or the scheduler costs each a claim query, so only new work wakes them."""
    files = {"receipt.html": "<p>{{ event.attributes.amount }}</p>"}
    client, services = await api(
        {"templates": {"receipt": {"subject": "Receipt", "html": "receipt.html"}},
         "transactions": {"receipt": {"event": "purchase", "template": "receipt"}}},
        files,
    )
    delivery_wake = services.messages._wake
    scheduler_wake = services.campaigns.scheduler._wake
    await client.post("/api/user/u1/event/page-view", json={}, headers=AUTH)
    assert not delivery_wake.is_set()
    assert not scheduler_wake.is_set()

    await client.post("/api/user/u1/event/purchase", json={"attributes": {"amount": 3}}, headers=AUTH)
    assert delivery_wake.is_set()

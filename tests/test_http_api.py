"""The HTTP ingest API through a real server on loopback and a real MariaDB."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime

import pytest

from conftest import AUTH


async def count(db, table: str) -> int:
    row = await db.fetch_one(f"SELECT COUNT(*) AS n FROM {table}")
    return row["n"]


async def table_counts(db) -> dict[str, int]:
    return {t: await count(db, t) for t in ("users", "events", "idempotency_keys")}


# --- auth ----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key"}])
async def test_api_rejects_missing_or_wrong_key(api, db, headers):
    client, _ = await api()
    response = await client.post("/api/user/u1", json={"attributes": {}}, headers=headers)
    assert response.status == 401
    assert "API key" in (await response.json())["error"]
    assert await count(db, "users") == 0


async def test_v1_takes_key_as_basic_user(api):
    client, _ = await api()
    good = "Basic " + base64.b64encode(b"test-key:").decode()
    bad = "Basic " + base64.b64encode(b"nope:").decode()
    body = {"userId": "u1", "traits": {"plan": "pro"}}
    assert (await client.post("/v1/identify", json=body, headers={"Authorization": bad})).status == 401
    assert (await client.post("/v1/identify", json=body, headers=AUTH)).status == 401
    response = await client.post("/v1/identify", json=body, headers={"Authorization": good})
    assert response.status == 200


async def test_health_and_metrics_need_no_key(api):
    client, _ = await api()
    assert (await client.get("/healthz")).status == 200
    await client.post("/api/user/u1/event/signup", json={}, headers=AUTH)
    text = await (await client.get("/metrics")).text()
    assert "segflowd_events_ingested_total" in text
    assert 'segflowd_http_requests_total{route="/api/user/{user_id}/event/{name}",status="201"}' in text
    assert "segflowd_db_pool_in_use" in text


# --- users ---------------------------------------------------------------------


async def test_post_user_creates_then_merges(api):
    client, _ = await api()
    first = await client.post("/api/user/u1", json={"attributes": {"name": "Ann", "plan": "free"}}, headers=AUTH)
    assert first.status == 201
    assert (await first.json())["created"] is True
    second = await client.post("/api/user/u1", json={"attributes": {"plan": "pro", "age": 31}}, headers=AUTH)
    assert second.status == 200
    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    assert user["attributes"] == {"name": "Ann", "plan": "pro", "age": 31}
    assert user["segments"] == []
    assert user["campaigns"] == []


async def test_null_attribute_removes_key(api):
    client, _ = await api()
    await client.post("/api/user/u1", json={"attributes": {"name": "Ann", "plan": "free"}}, headers=AUTH)
    await client.post("/api/user/u1", json={"attributes": {"plan": None}}, headers=AUTH)
    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    assert user["attributes"] == {"name": "Ann"}


async def test_patch_unknown_user_is_404(api, db):
    client, _ = await api()
    response = await client.patch("/api/user/ghost", json={"attributes": {"a": 1}}, headers=AUTH)
    assert response.status == 404
    assert "ghost" in (await response.json())["error"]
    assert await count(db, "users") == 0


async def test_patch_merges_existing_user(api):
    client, _ = await api()
    await client.post("/api/user/u1", json={"attributes": {"a": 1}}, headers=AUTH)
    response = await client.patch("/api/user/u1", json={"attributes": {"b": 2}}, headers=AUTH)
    assert response.status == 200
    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    assert user["attributes"] == {"a": 1, "b": 2}


async def test_get_unknown_user_is_404(api):
    client, _ = await api()
    response = await client.get("/api/user/ghost", headers=AUTH)
    assert response.status == 404


async def test_delete_user_removes_events(api, db):
    client, _ = await api()
    await client.post("/api/user/u1", json={"attributes": {"a": 1}}, headers=AUTH)
    await client.post("/api/user/u1/event/purchase", json={"attributes": {"amount": 5}}, headers=AUTH)
    await client.post("/api/user/u2/event/purchase", json={}, headers=AUTH)
    response = await client.delete("/api/user/u1", headers=AUTH)
    assert response.status == 200
    assert (await client.get("/api/user/u1", headers=AUTH)).status == 404
    assert (await client.delete("/api/user/u1", headers=AUTH)).status == 404
    rows = await db.fetch_all("SELECT user_id FROM events")
    assert [r["user_id"] for r in rows] == ["u2"]


# --- events ----------------------------------------------------------------------


async def test_event_creates_unknown_user(api, db):
    client, _ = await api()
    response = await client.post("/api/user/new-user/event/signup", json={"attributes": {"source": "ad"}}, headers=AUTH)
    assert response.status == 201
    body = await response.json()
    assert body["user_created"] is True
    assert body["segments"] == {"entered": [], "left": []}
    row = await db.fetch_one("SELECT user_id, name, attributes FROM events WHERE id = %s", (body["event_id"],))
    assert row["user_id"] == "new-user"
    assert json.loads(row["attributes"]) == {"source": "ad"}


async def test_timestamp_offset_is_stored_as_utc(api, db):
    client, _ = await api()
    response = await client.post(
        "/api/user/u1/event/login", json={"timestamp": "2026-03-29T01:30:00+02:00"}, headers=AUTH
    )
    body = await response.json()
    assert body["timestamp"] == "2026-03-28T23:30:00.000000Z"
    row = await db.fetch_one("SELECT created_at FROM events WHERE id = %s", (body["event_id"],))
    assert row["created_at"] == datetime(2026, 3, 28, 23, 30)


async def test_timestamp_without_offset_is_utc(api, db):
    client, _ = await api()
    response = await client.post("/api/user/u1/event/login", json={"timestamp": "2026-03-29T01:30:00"}, headers=AUTH)
    row = await db.fetch_one("SELECT created_at FROM events WHERE id = %s", ((await response.json())["event_id"],))
    assert row["created_at"] == datetime(2026, 3, 29, 1, 30)


async def test_missing_timestamp_uses_clock(api, db, clock):
    client, _ = await api()
    response = await client.post("/api/user/u1/event/login", json={}, headers=AUTH)
    row = await db.fetch_one("SELECT created_at FROM events WHERE id = %s", ((await response.json())["event_id"],))
    assert row["created_at"] == clock.now()


async def test_idempotency_key_stores_one_event(api, db):
    client, _ = await api()
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    body = {"attributes": {"amount": 12.5}, "timestamp": "2026-01-02T03:04:05Z"}
    first = await client.post("/api/user/u1/event/purchase", json=body, headers=headers)
    second = await client.post("/api/user/u1/event/purchase", json=body, headers=headers)
    assert first.status == second.status == 201
    assert await first.json() == await second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert await count(db, "events") == 1


async def test_idempotency_key_reused_for_other_body_is_409(api, db):
    client, _ = await api()
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    await client.post("/api/user/u1/event/purchase", json={"attributes": {"amount": 1}}, headers=headers)
    response = await client.post("/api/user/u1/event/purchase", json={"attributes": {"amount": 2}}, headers=headers)
    assert response.status == 409
    assert "order-1" in (await response.json())["error"]
    assert await count(db, "events") == 1


async def test_unicode_round_trips(api, db):
    client, _ = await api()
    user_id = "ユーザー-🎧-مرحبا"
    attributes = {"name": "Zoë 山田 שלום", "emoji": "🎶🔥", "rtl": "مرحبا بالعالم", "nested": {"k": "ü"}}
    response = await client.post(f"/api/user/{user_id}", json={"attributes": attributes}, headers=AUTH)
    assert response.status == 201
    user = await (await client.get(f"/api/user/{user_id}", headers=AUTH)).json()
    assert user["id"] == user_id
    assert user["attributes"] == attributes
    event = await client.post(f"/api/user/{user_id}/event/購入", json={"attributes": {"曲": "🎸"}}, headers=AUTH)
    row = await db.fetch_one("SELECT user_id, name, attributes FROM events WHERE id = %s", ((await event.json())["event_id"],))
    assert (row["user_id"], row["name"], json.loads(row["attributes"])) == (user_id, "購入", {"曲": "🎸"})


async def test_ids_differing_in_case_are_distinct(api, db):
    client, _ = await api()
    await client.post("/api/user/Ann", json={"attributes": {"v": 1}}, headers=AUTH)
    await client.post("/api/user/ann", json={"attributes": {"v": 2}}, headers=AUTH)
    assert await count(db, "users") == 2


# --- bad input writes nothing ------------------------------------------------------

BAD_REQUESTS = [
    ("malformed json", "/api/user/u1/event/e", b'{"attributes": ', 400, None),
    ("empty body", "/api/user/u1/event/e", b"", 400, None),
    ("not an object", "/api/user/u1/event/e", b"[1, 2]", 422, None),
    ("attributes not object", "/api/user/u1/event/e", b'{"attributes": [1]}', 422, "attributes"),
    ("attributes string", "/api/user/u1", b'{"attributes": "x"}', 422, "attributes"),
    ("unknown field", "/api/user/u1/event/e", b'{"attributes": {}, "userid": "x"}', 422, "userid"),
    ("unknown user field", "/api/user/u1", b'{"traits": {}}', 422, "traits"),
    ("bad timestamp", "/api/user/u1/event/e", b'{"timestamp": "yesterday"}', 422, "timestamp"),
    ("timestamp number", "/api/user/u1/event/e", b'{"timestamp": 1700000000}', 422, "timestamp"),
    ("impossible date", "/api/user/u1/event/e", b'{"timestamp": "2026-02-30T00:00:00Z"}', 422, "timestamp"),
    ("NaN", "/api/user/u1/event/e", b'{"attributes": {"x": NaN}}', 400, None),
    ("long user id", "/api/user/" + "x" * 256 + "/event/e", b"{}", 422, "user id (path)"),
    ("long event name", "/api/user/u1/event/" + "e" * 256, b"{}", 422, "event name (path)"),
    ("blank user id", "/api/user/%20/event/e", b"{}", 422, "user id (path)"),
    ("invalid utf-8", "/api/user/u1/event/e", b'{"attributes": {"x": "\xff"}}', 400, None),
]


@pytest.mark.parametrize(("case", "path", "body", "status", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_request_is_rejected_and_writes_nothing(api, db, case, path, body, status, field):
    client, _ = await api()
    before = await table_counts(db)
    response = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == status
    error = await response.json()
    assert error["error"]
    if field is not None:
        assert error["field"] == field
    assert await table_counts(db) == before


async def test_user_id_255_chars_is_accepted(api):
    client, _ = await api()
    response = await client.post("/api/user/" + "é" * 255, json={}, headers=AUTH)
    assert response.status == 201


async def test_oversized_body_is_413(api, db):
    client, _ = await api({"http": {
        "listen": "127.0.0.1:0", "api_keys": ["test-key"], "secret": "test-secret-value", "max_body_bytes": 1000,
    }})
    body = json.dumps({"attributes": {"blob": "x" * 2000}})
    response = await client.post("/api/user/u1", data=body, headers=AUTH)
    assert response.status == 413
    assert "max_body_bytes" in (await response.json())["error"]
    assert await count(db, "users") == 0


async def test_oversized_gzip_body_is_413(api, db):
    client, _ = await api({"http": {
        "listen": "127.0.0.1:0", "api_keys": ["test-key"], "secret": "test-secret-value", "max_body_bytes": 1000,
    }})
    body = gzip.compress(json.dumps({"attributes": {"blob": "x" * 5000}}).encode())
    assert len(body) < 1000
    response = await client.post("/api/user/u1", data=body, headers={**AUTH, "Content-Encoding": "gzip"})
    assert response.status == 413
    assert await count(db, "users") == 0


# --- batch -----------------------------------------------------------------------------


async def test_batch_gives_result_per_item(api, db):
    client, _ = await api()
    batch = [
        {"type": "identify", "userId": "u1", "traits": {"name": "Ann"}},
        {"type": "track", "userId": "u1", "event": "purchase", "properties": {"amount": 9}, "messageId": "m1",
         "timestamp": "2026-01-01T10:00:00+01:00"},
        {"type": "track", "userId": 42, "event": "purchase"},
        {"type": "page", "userId": "u1"},
        {"type": "track", "userId": "u1", "event": "purchase", "colour": "red"},
    ]
    response = await client.post("/api/batch", json={"batch": batch}, headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 0, 3)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "accepted", "rejected", "rejected", "rejected"]
    assert body["results"][2]["field"] == "batch[2].userId"
    assert body["results"][3]["field"] == "batch[3].type"
    assert body["results"][4]["field"] == "batch[4].colour"
    row = await db.fetch_one("SELECT created_at FROM events")
    assert row["created_at"] == datetime(2026, 1, 1, 9, 0)
    assert await count(db, "events") == 1


async def test_batch_message_id_deduplicates(api, db):
    client, _ = await api()
    batch = [{"type": "track", "userId": "u1", "event": "e", "messageId": "m1"}]
    await client.post("/api/batch", json={"batch": batch}, headers=AUTH)
    response = await client.post("/api/batch", json={"batch": batch + batch}, headers=AUTH)
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["duplicate", "duplicate"]
    assert await count(db, "events") == 1


async def test_batch_same_message_id_twice_in_one_batch(api, db):
    client, _ = await api()
    item = {"type": "track", "userId": "u1", "event": "e", "messageId": "m1"}
    body = await (await client.post("/api/batch", json={"batch": [item, item]}, headers=AUTH)).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate"]
    assert await count(db, "events") == 1


async def test_batch_over_limit_writes_nothing(api, db):
    client, _ = await api()
    batch = [{"type": "identify", "userId": f"u{i}"} for i in range(1001)]
    response = await client.post("/api/batch", json={"batch": batch}, headers=AUTH)
    assert response.status == 422
    assert "limit is 1000" in (await response.json())["error"]
    assert await count(db, "users") == 0


@pytest.mark.parametrize("body", [{"batch": []}, {"batch": {}}, {"items": []}, {"batch": [{"type": "track"}]}])
async def test_batch_bad_shapes_are_422(api, db, body):
    client, _ = await api()
    response = await client.post("/api/batch", json=body, headers=AUTH)
    assert response.status == 422
    assert await table_counts(db) == {"users": 0, "events": 0, "idempotency_keys": 0}


async def test_v1_batch_accepts_segment_extras_and_gzip(api, db):
    client, _ = await api()
    payload = {
        "batch": [
            {"type": "identify", "userId": "u1", "traits": {"email": "a@example.test"}, "messageId": "x1",
             "context": {"library": {"name": "analytics-python"}}, "integrations": {}, "anonymousId": None},
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 3},
             "messageId": "x2", "timestamp": "2026-01-01T00:00:00+00:00", "context": {}},
        ],
        "sentAt": "2026-01-01T00:00:01+00:00",
        "writeKey": "test-key",
    }
    auth = {"Authorization": "Basic " + base64.b64encode(b"test-key:").decode(), "Content-Encoding": "gzip",
            "Content-Type": "application/json"}
    response = await client.post("/v1/batch", data=gzip.compress(json.dumps(payload).encode()), headers=auth)
    assert response.status == 200
    assert (await response.json())["accepted"] == 2
    row = await db.fetch_one("SELECT name, attributes FROM events")
    assert row["name"] == "Order Completed"


async def test_v1_track_without_user_id_is_422(api, db):
    client, _ = await api()
    auth = {"Authorization": "Basic " + base64.b64encode(b"test-key:").decode()}
    response = await client.post("/v1/track", json={"anonymousId": "a1", "event": "x"}, headers=auth)
    assert response.status == 422
    assert "userId" in (await response.json())["error"]
    assert await count(db, "events") == 0


async def test_unknown_route_and_method_are_json(api):
    client, _ = await api()
    missing = await client.post("/api/users/u1", json={}, headers=AUTH)
    assert missing.status == 404
    assert "no route for POST /api/users/u1" in (await missing.json())["error"]
    wrong = await client.put("/api/user/u1", json={}, headers=AUTH)
    assert wrong.status == 405
    error = (await wrong.json())["error"]
    assert "PUT is not allowed on /api/user/u1" in error
    assert "PATCH" in error

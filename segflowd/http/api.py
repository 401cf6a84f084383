"""The /api/ routes: users, events and batches."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from segflowd.http import validation as v
from segflowd.http.keys import INGEST, SERVICES
from segflowd.ingest import Ingest
from segflowd.model import RejectedItem

_USER_FIELDS = {"attributes"}
_EVENT_FIELDS = {"attributes", "timestamp"}


def _user_id(request: web.Request) -> str:
    return v.identifier(request.match_info["user_id"], "user id (path)", "user id")


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    body = v.require_object(await v.read_json(request, request.app[SERVICES].config.http.max_body_bytes))
    v.reject_unknown(body, allowed)
    return body


async def post_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await _body(request, _USER_FIELDS)
    outcome = await request.app[INGEST].identify(user_id, v.attributes(body.get("attributes"), "attributes"))
    return web.json_response(outcome.body, status=201 if outcome.created else 200)


async def patch_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await _body(request, _USER_FIELDS)
    outcome = await request.app[INGEST].identify(
        user_id, v.attributes(body.get("attributes"), "attributes"), must_exist=True
    )
    return web.json_response(outcome.body)


async def get_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    user = await request.app[INGEST].get_user(user_id)
    if user is None:
        return web.json_response({"error": f"user {user_id!r} does not exist"}, status=404)
    return web.json_response(user)


async def delete_user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    if not await request.app[INGEST].delete_user(user_id):
        return web.json_response({"error": f"user {user_id!r} does not exist"}, status=404)
    return web.json_response({"id": user_id, "deleted": True})


async def post_event(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    name = v.identifier(request.match_info["name"], "event name (path)", "event name")
    key = v.idempotency_key(request.headers.get("Idempotency-Key"), "Idempotency-Key")
    body = await _body(request, _EVENT_FIELDS)
    attributes = v.attributes(body.get("attributes"), "attributes")
    when = v.timestamp(body.get("timestamp"), "timestamp")
    outcome = await request.app[INGEST].track(
        user_id, name, attributes, when, idempotency_key=key, raw_timestamp=body.get("timestamp")
    )
    response = web.json_response(outcome.body, status=201)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def parse_batch(body: Any, *, max_items: int, lenient: bool) -> list[Any]:
    """Validate a Segment-format batch; each bad item becomes a RejectedItem in its place."""
    body = v.require_object(body)
    if not lenient:
        v.reject_unknown(body, {"batch"})
    items = body.get("batch")
    if not isinstance(items, list):
        raise v.InvalidRequest(422, "expected an array of identify and track calls", "batch")
    if not items:
        raise v.InvalidRequest(422, "the batch is empty; send at least one call", "batch")
    if len(items) > max_items:
        raise v.InvalidRequest(
            422, f"the batch has {len(items)} calls; the limit is {max_items} (http.max_batch_items)", "batch"
        )
    parsed: list[Any] = []
    for index, item in enumerate(items):
        try:
            parsed.append(v.segment_item(item, f"batch[{index}].", lenient=lenient))
        except v.InvalidRequest as exc:
            parsed.append(RejectedItem(exc.body()))
    return parsed


async def run_batch(ingest: Ingest, items: list[Any]) -> web.Response:
    """Store the valid items; 200 with a result per item, or 422 if every item was rejected."""
    if all(isinstance(item, RejectedItem) for item in items):
        results = [{"index": i, "status": "rejected", **item.error} for i, item in enumerate(items)]
        first = items[0].error
        return web.json_response(
            {"error": f"every call in the batch was rejected; first: {first['error']}", "results": results},
            status=422,
        )
    results = await ingest.batch(items)
    counts = {status: sum(1 for r in results if r["status"] == status) for status in ("accepted", "duplicate", "rejected")}
    return web.json_response({**counts, "results": results})


async def post_batch(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config.http
    items = parse_batch(await v.read_json(request, config.max_body_bytes), max_items=config.max_batch_items, lenient=False)
    return await run_batch(request.app[INGEST], items)


def add_routes(app: web.Application) -> None:
    app[INGEST] = Ingest(app[SERVICES])
    app.router.add_post("/api/user/{user_id}", post_user)
    app.router.add_patch("/api/user/{user_id}", patch_user)
    app.router.add_get("/api/user/{user_id}", get_user)
    app.router.add_delete("/api/user/{user_id}", delete_user)
    app.router.add_post("/api/user/{user_id}/event/{name}", post_event)
    app.router.add_post("/api/batch", post_batch)

"""Segment's HTTP tracking API shape: /v1/identify, /v1/track and /v1/batch.

Segment's official client libraries send here unmodified: the write key is
the HTTP Basic user name, bodies may be gzip-encoded (aiohttp decodes them),
and the extra fields the libraries add (context, integrations, sentAt, ...)
are accepted and ignored.
"""

from __future__ import annotations

from aiohttp import web

from segflowd.http import validation as v
from segflowd.http.api import parse_batch, run_batch
from segflowd.http.keys import INGEST, SERVICES


async def _single(request: web.Request, kind: str) -> web.Response:
    body = await v.read_json(request, request.app[SERVICES].config.http.max_body_bytes)
    item = v.segment_item(body, "", lenient=True, default_type=kind)
    # One call goes through the batch path, which honours messageId.
    result = (await request.app[INGEST].batch([item]))[0]
    if result["status"] == "rejected":
        return web.json_response({"error": result["error"], "field": result.get("field")}, status=422)
    return web.json_response({"success": True, **result})


async def identify(request: web.Request) -> web.Response:
    return await _single(request, "identify")


async def track(request: web.Request) -> web.Response:
    return await _single(request, "track")


async def batch(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config.http
    items = parse_batch(await v.read_json(request, config.max_body_bytes), max_items=config.max_batch_items, lenient=True)
    return await run_batch(request.app[INGEST], items)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/identify", identify)
    app.router.add_post("/v1/track", track)
    app.router.add_post("/v1/batch", batch)

"""The aiohttp application: routes, middlewares and the background tasks' lifecycle."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from segflowd.http import api, segment_api, system
from segflowd.http.auth import is_authorized
from segflowd.http.keys import SERVICES
from segflowd.http.validation import InvalidRequest
from segflowd.ingest import IdempotencyConflict, UserNotFound
from segflowd.metrics import REGISTRY
from segflowd.services import Services

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "segflowd_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "segflowd_http_request_seconds", "HTTP request handling time by route.", ["route"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POOL_IN_USE = Gauge("segflowd_db_pool_in_use", "Database connections checked out of the pool.", registry=REGISTRY)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = _route_name(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        REQUESTS.labels(route, str(status)).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith("/api/") or path.startswith("/v1/"):
        keys = request.app[SERVICES].config.http.api_keys
        basic = path.startswith("/v1/")
        if not is_authorized(request, keys, basic=basic):
            expected = (
                "HTTP Basic auth with an API key as the user name" if basic else "an 'Authorization: Bearer <key>' header"
            )
            response = json_error(401, f"missing or invalid API key; send {expected} with a key from http.api_keys")
            if basic:
                response.headers["WWW-Authenticate"] = 'Basic realm="segflowd"'
            return response
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON `{"error": ...}` response and log the unexpected ones."""
    try:
        return await handler(request)
    except InvalidRequest as exc:
        return web.json_response(exc.body(), status=exc.status)
    except UserNotFound as exc:
        return json_error(404, str(exc))
    except IdempotencyConflict as exc:
        return json_error(409, str(exc), "Idempotency-Key")
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVICES].config.http.max_body_bytes
        return json_error(413, f"request body is over the limit of {limit} bytes (http.max_body_bytes)")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return json_error(405, f"{request.method} is not allowed on {request.path}; allowed methods: {allowed}")
    except web.HTTPNotFound:
        if request.path.startswith("/unsubscribe"):
            raise
        return json_error(
            404, f"no route for {request.method} {request.path}; the routes are listed in docs/api.md, "
            "such as POST /api/user/{id} and POST /api/user/{id}/event/{name}"
        )
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/unsubscribe"):
            raise
        return json_error(exc.status, exc.reason)
    except Exception:
        log.exception(
            "request failed", extra={"action": "http_error", "method": request.method, "path": request.path}
        )
        return json_error(500, "internal error; the request was not stored, so it is safe to retry")


def build_app(services: Services, *, run_background: bool = True) -> web.Application:
    """Build the application; with `run_background`, the scheduler, refresher and delivery run with it."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
        # The body limit is checked in read_json with a JSON error; aiohttp's
        # own limit sits above it only as a guard.
        client_max_size=services.config.http.max_body_bytes + 1,
    )
    app[SERVICES] = services
    api.add_routes(app)
    segment_api.add_routes(app)
    system.add_routes(app)
    try:
        from segflowd.http import unsubscribe
    except ImportError:  # pragma: no cover - the unsubscribe pages ship with the messages part
        unsubscribe = None
    if unsubscribe is not None and hasattr(unsubscribe, "add_routes"):
        unsubscribe.add_routes(app)

    POOL_IN_USE.set_function(lambda: services.db.in_use)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if run_background:
            await services.start_background()
            log.info("background tasks started", extra={"action": "start_background"})
        yield
        if run_background:
            await services.stop_background()
            log.info("background tasks stopped", extra={"action": "stop_background"})

    app.cleanup_ctx.append(lifecycle)
    return app

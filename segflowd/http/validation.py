"""Request bodies: JSON decoding and field checks with errors that name the field.

Every check raises `InvalidRequest` with the HTTP status, the field path
(`batch[3].userId`) and a sentence saying what was expected.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from segflowd.model import IdentifyItem, TrackItem
from segflowd.timestamps import parse_timestamp

MAX_ID_LENGTH = 255


class InvalidRequest(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.field:
            body["field"] = self.field
        return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """Read and decode the body; 413 if over `max_bytes` (after gzip decoding), 400 if not JSON."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise InvalidRequest(413, f"request body is {request.content_length} bytes; the limit is {max_bytes} (http.max_body_bytes)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidRequest(413, f"request body is over the limit of {max_bytes} bytes (http.max_body_bytes)") from None
    if len(raw) > max_bytes:
        raise InvalidRequest(413, f"request body is {len(raw)} bytes; the limit is {max_bytes} (http.max_body_bytes)")
    if not raw.strip():
        raise InvalidRequest(400, "request body is empty; expected a JSON object")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidRequest(400, "request body is not UTF-8 text; send JSON encoded as UTF-8") from None
    except ValueError as exc:
        raise InvalidRequest(400, f"request body is not valid JSON: {exc}") from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def require_object(value: Any, field: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(422, f"expected a JSON object, got {_type_name(value)}", field)
    return value


def reject_unknown(body: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    for key in body:
        if key not in allowed:
            field = f"{prefix}{key}"
            raise InvalidRequest(422, f"unknown field; allowed fields are {', '.join(sorted(allowed))}", field)


def identifier(value: Any, field: str, what: str = "id") -> str:
    """Return a valid user id or event name: a non-empty string of at most 255 characters."""
    if not isinstance(value, str):
        raise InvalidRequest(422, f"expected the {what} as a string, got {_type_name(value)}", field)
    if not value.strip():
        raise InvalidRequest(422, f"the {what} is empty", field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequest(422, f"the {what} is {len(value)} characters; the limit is {MAX_ID_LENGTH}", field)
    if "\x00" in value:
        raise InvalidRequest(422, f"the {what} contains a NUL character", field)
    return value


def attributes(value: Any, field: str) -> dict[str, Any]:
    """Return an attributes object; missing or null means no attributes."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(422, f"expected a JSON object of attributes, got {_type_name(value)}", field)
    return value


def timestamp(value: Any, field: str) -> datetime | None:
    """Return an optional ISO-8601 timestamp as naive UTC; no offset means UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(422, f"expected an ISO-8601 timestamp string, got {_type_name(value)}", field)
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise InvalidRequest(422, str(exc), field) from None


def idempotency_key(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidRequest(422, f"expected a string of 1 to {MAX_ID_LENGTH} characters", field)
    return value


# Fields that Segment's client libraries put on every call besides the ones
# segflowd reads. The Segment-shaped /v1 routes accept and ignore them.
SEGMENT_EXTRA_FIELDS = {
    "anonymousId", "context", "integrations", "sentAt", "originalTimestamp", "receivedAt",
    "writeKey", "_metadata", "version", "channel", "library", "options", "previousId", "groupId",
    "name", "category", "properties", "traits", "event",
}
_ITEM_FIELDS = {
    "identify": {"type", "userId", "traits", "timestamp", "messageId"},
    "track": {"type", "userId", "event", "properties", "timestamp", "messageId"},
}


def segment_item(item: Any, prefix: str, *, lenient: bool, default_type: str | None = None) -> IdentifyItem | TrackItem:
    """Convert one Segment-format call (identify or track) into an ingest item.

    `lenient` accepts and ignores the extra fields Segment's libraries send;
    otherwise an unknown field is rejected.
    """
    item = require_object(item, prefix.rstrip(".") or None)
    kind = item.get("type", default_type)
    if kind not in _ITEM_FIELDS:
        raise InvalidRequest(422, f"expected type 'identify' or 'track', got {kind!r}", f"{prefix}type")
    allowed = _ITEM_FIELDS[kind] | (SEGMENT_EXTRA_FIELDS if lenient else set())
    reject_unknown(item, allowed, prefix)
    if item.get("userId") is None:
        raise InvalidRequest(
            422, "missing; segflowd stores known users only, so every call needs a userId", f"{prefix}userId"
        )
    user_id = identifier(item["userId"], f"{prefix}userId", "user id")
    key = idempotency_key(item.get("messageId"), f"{prefix}messageId")
    if kind == "identify":
        return IdentifyItem(user_id, attributes(item.get("traits"), f"{prefix}traits"), key)
    name = identifier(item.get("event"), f"{prefix}event", "event name")
    when = timestamp(item.get("timestamp"), f"{prefix}timestamp")
    return TrackItem(
        user_id, name, attributes(item.get("properties"), f"{prefix}properties"), when, key, item.get("timestamp")
    )

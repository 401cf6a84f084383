"""API key checks: Bearer for /api/, HTTP Basic (key as user name) for /v1/."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web


def _matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing reveals nothing."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def basic_key(request: web.Request) -> str | None:
    """The user name of HTTP Basic auth, which is where Segment's libraries put the write key."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None


def is_authorized(request: web.Request, keys: tuple[str, ...], *, basic: bool) -> bool:
    candidate = basic_key(request) if basic else bearer_key(request)
    return candidate is not None and _matches(candidate, keys)

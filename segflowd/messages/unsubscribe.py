"""Signed unsubscribe links and the unsubscribe action itself.

A link is `{http.public_url}/unsubscribe/{token}`. The token is the user id
(base64url) and an HMAC-SHA256 of it under `http.secret`, so nobody can
unsubscribe a user whose link they were not sent. Tokens do not expire: a
link in an old message must keep working. Changing the secret invalidates
every link already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime
from typing import Any

from segflowd.config import Config
from segflowd.users import get_user, update_user

# The HMAC covers this prefix too, so a signature made for another purpose
# with the same secret can never pass as an unsubscribe token.
_PURPOSE = b"segflowd-unsubscribe-v1:"
# 128 bits of the HMAC, enough against guessing and short enough for a URL.
_SIGNATURE_BYTES = 16
PATH_PREFIX = "/unsubscribe/"


class InvalidToken(ValueError):
    """An unsubscribe token that was altered, truncated or signed with another secret."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, user_id: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _PURPOSE + user_id.encode("utf-8"), hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def make_token(secret: str, user_id: str) -> str:
    """The token for one user: `<user id, base64url>.<signature, base64url>`."""
    return f"{_b64encode(user_id.encode('utf-8'))}.{_b64encode(_signature(secret, user_id))}"


def read_token(secret: str, token: str) -> str:
    """Return the user id of a valid token; raise InvalidToken otherwise."""
    encoded_id, dot, encoded_signature = token.partition(".")
    if not dot or not encoded_id or not encoded_signature:
        raise InvalidToken("the token has no signature part")
    try:
        user_id = _b64decode(encoded_id).decode("utf-8")
        signature = _b64decode(encoded_signature)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidToken("the token is not valid base64url") from None
    if not hmac.compare_digest(signature, _signature(secret, user_id)):
        raise InvalidToken("the token's signature does not match")
    return user_id


def unsubscribe_url(config: Config, user_id: str) -> str:
    """The signed link that unsubscribes this user, under `http.public_url`."""
    return f"{config.http.public_url}{PATH_PREFIX}{make_token(config.http.secret, user_id)}"


async def is_user_unsubscribed(cur: Any, user_id: str) -> bool | None:
    """True or False for an existing user; None if there is no such user."""
    user = await get_user(cur, user_id)
    if user is None:
        return None
    return user.get("unsubscribed") is True


async def unsubscribe_user(cur: Any, segments: Any, user_id: str, now: datetime) -> bool:
    """Set `"unsubscribed": true` on the user in the caller's transaction; False if there is no such user.

    The user's segments are evaluated again in the same transaction, so a
    segment such as `unsubscribed` (and the campaigns that exclude it)
    sees the change at once.
    """
    if not await update_user(cur, user_id, {"unsubscribed": True}, now):
        return False
    await segments.evaluate_user(cur, user_id)
    return True

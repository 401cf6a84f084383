"""The unsubscribe pages behind the links in campaign mail.

`GET /unsubscribe/{token}` shows a confirmation page with a button and
changes nothing, since mail scanners and link previews fetch links.
`POST /unsubscribe/{token}` unsubscribes at once: it is the RFC 8058
one-click request that mail providers send (body
`List-Unsubscribe=One-Click`) and what the page's button sends. Neither
needs an API key: the signed token is the authorization.
"""

from __future__ import annotations

import html
import logging

from aiohttp import web

from segflowd.db import ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, error_code
from segflowd.http.keys import SERVICES
from segflowd.messages.compose import InvalidAddress, parse_sender
from segflowd.messages.unsubscribe import InvalidToken, is_user_unsubscribed, read_token, unsubscribe_user

log = logging.getLogger(__name__)

_ATTEMPTS = 3

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem; color: #222; }}
button {{ font-size: 1rem; padding: .6rem 1.2rem; cursor: pointer; }}
p.small {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

_HEADERS = {
    "Cache-Control": "no-store",
    # The token is in the URL; keep it out of Referer headers and indexes.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=_HEADERS,
    )


def _sender_name(request: web.Request) -> str:
    config = request.app[SERVICES].config
    try:
        sender = parse_sender(config.email.from_address)
    except InvalidAddress:
        return "us"
    return sender.display_name or sender.domain


def _invalid_link() -> web.Response:
    return _page(
        "Invalid unsubscribe link",
        "<p>This unsubscribe link is incomplete or was changed. Copy the whole link from the email "
        "into your browser, or reply to the email and ask to be unsubscribed.</p>",
        status=400,
    )


def _user_id(request: web.Request) -> str | None:
    secret = request.app[SERVICES].config.http.secret
    try:
        return read_token(secret, request.match_info["token"])
    except InvalidToken:
        return None


async def show_confirmation(request: web.Request) -> web.Response:
    """GET: ask for confirmation; unsubscribe nothing."""
    user_id = _user_id(request)
    if user_id is None:
        return _invalid_link()
    services = request.app[SERVICES]
    async with services.db.transaction() as cur:
        state = await is_user_unsubscribed(cur, user_id)
    sender = html.escape(_sender_name(request))
    if state is None:
        return _page("Unsubscribe", f"<p>This address gets no email from {sender}.</p>")
    if state:
        return _page(
            "You are unsubscribed",
            f"<p>You already get no campaign email from {sender}. Receipts and other email about "
            "your own actions still arrive.</p>",
        )
    return _page(
        "Unsubscribe",
        f"<p>Stop campaign email from {sender}? Receipts and other email about your own actions "
        "will still arrive.</p>\n"
        '<form method="post">\n'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
        "<button type=\"submit\">Unsubscribe</button>\n"
        "</form>",
    )


async def unsubscribe(request: web.Request) -> web.Response:
    """POST: unsubscribe at once (RFC 8058 one-click, or the confirmation page's button)."""
    user_id = _user_id(request)
    if user_id is None:
        return _invalid_link()
    services = request.app[SERVICES]
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with services.db.transaction() as cur:
                found = await unsubscribe_user(cur, services.segments, user_id, services.clock.now())
            break
        except Exception as exc:
            if error_code(exc) not in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT) or attempt == _ATTEMPTS:
                raise
    sender = html.escape(_sender_name(request))
    if not found:
        log.info("unsubscribe for an unknown user", extra={"action": "unsubscribe", "user_id": user_id, "found": False})
        return _page("Unsubscribe", f"<p>This address gets no email from {sender}.</p>")
    log.info("user unsubscribed", extra={"action": "unsubscribe", "user_id": user_id, "found": True})
    return _page(
        "You are unsubscribed",
        f"<p>You will get no more campaign email from {sender}. Receipts and other email about "
        "your own actions still arrive.</p>\n"
        '<p class="small">Unsubscribed by mistake? Reply to any of our emails and we will add you back.</p>',
    )


def add_routes(app: web.Application) -> None:
    """Serve `/unsubscribe/{token}` (GET page, POST one-click) without an API key."""
    app.router.add_get("/unsubscribe/{token}", show_confirmation)
    app.router.add_post("/unsubscribe/{token}", unsubscribe)

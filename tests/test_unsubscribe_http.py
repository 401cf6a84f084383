"""The unsubscribe pages: signed tokens, the confirmation page and the RFC 8058 one-click POST."""

from __future__ import annotations

import pytest
from aiohttp import web

from segflowd.http.app import build_app
from segflowd.http.keys import SERVICES
from segflowd.http.unsubscribe import add_routes
from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.unsubscribe import InvalidToken, make_token, read_token, unsubscribe_url
from segflowd.services import Services
from segflowd.users import get_user
from test_message_support import (  # noqa: F401 - fixtures
    add_event,
    add_user,
    clock,
    make_config,
    message_row,
    smtp_email,
    smtp_sink,
)

SECRET = "test-secret-value"
UNSUBSCRIBED_SEGMENT = {"sql": "SELECT u.id FROM users u WHERE u.attributes->>'$.unsubscribed' = 'true'"}


@pytest.fixture
async def services(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink), segments={"unsubscribed": UNSUBSCRIBED_SEGMENT})
    services = Services.build(config, db, clock)
    yield services
    await services.messages.stop()


@pytest.fixture
async def client(aiohttp_client, services):
    app = web.Application()
    app[SERVICES] = services
    add_routes(app)
    return await aiohttp_client(app)


async def attributes(db, user_id):
    async with db.transaction() as cur:
        return await get_user(cur, user_id)


def path_of(url: str) -> str:
    return url[len("http://127.0.0.1:8080"):]


async def queue_campaign(services, user_id, run_id):
    async with services.db.transaction() as cur:
        user = await get_user(cur, user_id)
        queued = await queue_message(
            cur, key=campaign_message_key(run_id, 0), kind="campaign", user_id=user_id, template="welcome",
            context=message_context(user, campaign="news"), now=services.clock.now(), campaign="news", run_id=run_id,
        )
    return queued.key


def test_token_round_trip():
    for user_id in ["u1", "ユーザー/42", "a.b+c@example.test", "x" * 255]:
        assert read_token(SECRET, make_token(SECRET, user_id)) == user_id


@pytest.mark.parametrize(
    "token",
    [
        "",
        "dTE",
        "dTE.",
        ".c2ln",
        "not base64!.abc",
        make_token(SECRET, "u1")[:-2],
        make_token(SECRET, "u1").split(".")[0] + "." + make_token(SECRET, "u2").split(".")[1],
        make_token("another-secret-value", "u1"),
    ],
)
def test_bad_tokens_are_rejected(token):
    with pytest.raises(InvalidToken):
        read_token(SECRET, token)


def test_unsubscribe_url_uses_public_url(make_config):
    config = make_config(http={"public_url": "https://mail.acme.test/", "api_keys": ["k"], "secret": SECRET})
    url = unsubscribe_url(config, "u1")
    assert url.startswith("https://mail.acme.test/unsubscribe/")
    assert read_token(SECRET, url.rsplit("/", 1)[1]) == "u1"


async def test_one_click_post_stops_campaign_mail(client, services, db, clock, smtp_sink):
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    await queue_campaign(services, "u1", run_id=1)
    await services.messages.deliver_due()
    [first] = smtp_sink.handler.received
    link = first.message["List-Unsubscribe"].strip()[1:-1]
    assert first.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # What a mail provider sends for RFC 8058 one-click: no cookies, no browser.
    response = await client.post(
        path_of(link), data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    assert "You are unsubscribed" in await response.text()
    assert (await attributes(db, "u1"))["unsubscribed"] is True

    second = await queue_campaign(services, "u1", run_id=2)
    event = await add_event(db, "u1", "purchase", {"order": "A-9", "total": 5}, clock)
    async with db.transaction() as cur:
        [receipt] = await services.messages.on_event(cur, event, clock.now())
    await services.messages.deliver_due()

    assert (await message_row(db, second))["status"] == "suppressed"
    assert (await message_row(db, receipt))["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_sink.handler.received] == ["Welcome, Ana!", "Receipt for order A-9"]


async def test_unsubscribe_updates_segments(client, services, db, clock):
    await add_user(db, "u1", clock, email="ana@example.test")
    response = await client.post(f"/unsubscribe/{make_token(SECRET, 'u1')}", data={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    rows = await db.fetch_all("SELECT segment FROM segment_members WHERE user_id = 'u1'")
    assert [row["segment"] for row in rows] == ["unsubscribed"]


async def test_get_shows_form_and_changes_nothing(client, db, clock):
    await add_user(db, "u1", clock, email="ana@example.test")
    response = await client.get(f"/unsubscribe/{make_token(SECRET, 'u1')}")
    text = await response.text()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert '<form method="post">' in text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in text
    assert "Acme" in text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "unsubscribed" not in await attributes(db, "u1")


async def test_get_for_unsubscribed_user_says_so(client, db, clock):
    await add_user(db, "u1", clock, email="ana@example.test", unsubscribed=True)
    response = await client.get(f"/unsubscribe/{make_token(SECRET, 'u1')}")
    text = await response.text()
    assert "You are unsubscribed" in text
    assert "<form" not in text


async def test_post_twice_is_harmless(client, db, clock):
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana", plan="pro")
    for _ in range(2):
        response = await client.post(f"/unsubscribe/{make_token(SECRET, 'u1')}")
        assert response.status == 200
    user = await attributes(db, "u1")
    assert user == {"id": "u1", "email": "ana@example.test", "name": "Ana", "plan": "pro", "unsubscribed": True}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_invalid_token_is_400_and_changes_nothing(client, db, clock, method):
    await add_user(db, "u1", clock, email="ana@example.test")
    forged = make_token("another-secret-value", "u1")
    response = await client.request(method, f"/unsubscribe/{forged}")
    assert response.status == 400
    assert "Invalid unsubscribe link" in await response.text()
    assert "unsubscribed" not in await attributes(db, "u1")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_user_is_not_an_error(client, method):
    response = await client.request(method, f"/unsubscribe/{make_token(SECRET, 'nobody')}")
    assert response.status == 200
    assert "gets no email" in await response.text()


async def test_user_data_is_escaped_on_the_page(client, db, clock, services):
    await add_user(db, "<b>x</b>", clock, email="ana@example.test")
    response = await client.get(f"/unsubscribe/{make_token(SECRET, '<b>x</b>')}")
    assert "<b>x</b>" not in await response.text()


async def test_resubscribe_through_the_user_api(aiohttp_client, services, db, clock):
    await add_user(db, "u1", clock, email="ana@example.test", unsubscribed=True)
    client = await aiohttp_client(build_app(services, run_background=False))

    # The unsubscribe routes need no API key in the full application.
    page = await client.get(f"/unsubscribe/{make_token(SECRET, 'u1')}")
    assert page.status == 200

    response = await client.post(
        "/api/user/u1", json={"attributes": {"unsubscribed": False}}, headers={"Authorization": "Bearer test-key"}
    )
    assert response.status == 200
    assert (await attributes(db, "u1"))["unsubscribed"] is False
    key = await queue_campaign(services, "u1", run_id=3)
    assert (await message_row(db, key))["status"] == "queued"

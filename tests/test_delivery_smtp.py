"""Delivery over SMTP to an aiosmtpd server in the test, with injected faults."""

from __future__ import annotations

import asyncio
import random
import ssl
from datetime import timedelta

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.service import MessageService
from segflowd.messages.smtp import classify_smtp_error
from segflowd.users import get_user
from test_message_support import (  # noqa: F401 - fixtures
    START,
    add_user,
    clock,
    make_certificate,
    make_config,
    message_row,
    smtp_email,
    smtp_sink,
    start_sink,
)


async def queue(db, clock, user_id, run_id=1, template="welcome"):
    async with db.transaction() as cur:
        user = await get_user(cur, user_id)
        queued = await queue_message(
            cur, key=campaign_message_key(run_id, 0), kind="campaign", user_id=user_id, template=template,
            context=message_context(user, campaign="c"), now=clock.now(), campaign="c", run_id=run_id,
        )
    return queued.key


async def test_451_twice_then_250(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, retry_base_seconds=2, retry_max_seconds=600))
    service = MessageService(config, db, clock, rng=random.Random(7))
    expected = random.Random(7)
    smtp_sink.handler.data_replies = ["451 4.3.0 Try again later", "451 4.3.0 Try again later"]
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert row["attempts"] == 1
    assert "451" in row["last_error"]
    first_delay = timedelta(seconds=2 * expected.uniform(0.5, 1.0))
    assert row["next_attempt_at"] == START + first_delay
    assert await service.deliver_due() == 0  # not due yet

    clock.advance(first_delay)
    await service.deliver_due()
    row = await message_row(db, key)
    assert row["attempts"] == 2
    second_delay = timedelta(seconds=4 * expected.uniform(0.5, 1.0))
    assert row["next_attempt_at"] == clock.now() + second_delay

    clock.advance(second_delay)
    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "sent"
    assert row["attempts"] == 3
    assert row["last_error"] is None
    assert row["provider_message_id"] == "2.0.0 Ok: queued as Q1"
    assert smtp_sink.handler.data_commands == 3
    assert len(smtp_sink.handler.received) == 1


async def test_550_fails_after_one_attempt(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    smtp_sink.handler.data_replies = ["550 5.7.1 Message rejected as spam"]
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    clock.advance(days=1)
    assert await service.deliver_due() == 0
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert "550 5.7.1 Message rejected as spam" in row["last_error"]
    assert row["last_error"].startswith("permanent failure")
    assert smtp_sink.handler.data_commands == 1
    assert smtp_sink.handler.received == []


async def test_recipient_refused_permanently(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    smtp_sink.handler.rcpt_replies["gone@example.test"] = "550 5.1.1 No such user"
    await add_user(db, "u1", clock, email="gone@example.test", name="Gone")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert "550" in row["last_error"]
    assert "No such user" in row["last_error"]


async def test_recipient_deferred_is_retried(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    smtp_sink.handler.rcpt_replies["busy@example.test"] = "450 4.2.1 Mailbox busy"
    await add_user(db, "u1", clock, email="busy@example.test", name="Busy")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert row["attempts"] == 1
    assert "450" in row["last_error"]


async def test_dropped_connection_mid_data_is_retried(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    smtp_sink.handler.drop_data = 1
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert row["attempts"] == 1
    assert "temporary failure" in row["last_error"]

    clock.advance(hours=1)
    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "sent"
    assert row["attempts"] == 2
    assert smtp_sink.handler.data_commands == 2
    assert len(smtp_sink.handler.received) == 1


async def test_gives_up_after_max_attempts(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink, max_attempts=3)), db, clock)
    smtp_sink.handler.data_replies = ["421 4.3.2 Service shutting down"] * 5
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")

    for _ in range(5):
        await service.deliver_due()
        clock.advance(hours=1)
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["last_error"].startswith("gave up after 3 attempts")
    assert smtp_sink.handler.data_commands == 3


async def test_backoff_is_capped(db, clock, make_config):
    config = make_config(email={"retry_base_seconds": 10, "retry_max_seconds": 60})
    delivery = MessageService(config, db, clock, rng=random.Random(1)).delivery
    delays = [delivery.backoff(attempt).total_seconds() for attempt in range(1, 12)]
    assert 5 <= delays[0] <= 10
    assert 10 <= delays[1] <= 20
    assert 20 <= delays[2] <= 40
    assert all(30 <= delay <= 60 for delay in delays[3:])


async def test_slow_server_does_not_block_others(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, workers=3), scheduler={"poll_interval": "1h"})
    service = MessageService(config, db, clock)
    slow = asyncio.Event()
    smtp_sink.handler.hold["slow@example.test"] = slow
    await add_user(db, "slow", clock, email="slow@example.test", name="Slow")
    await queue(db, clock, "slow", run_id=0)
    for i in range(1, 6):
        await add_user(db, f"u{i}", clock, email=f"u{i}@example.test", name=f"U{i}")
        await queue(db, clock, f"u{i}", run_id=i)

    await service.start()
    try:
        received = await smtp_sink.wait_for(5)
        assert sorted(r.rcpt_tos[0] for r in received) == [f"u{i}@example.test" for i in range(1, 6)]
        assert (await message_row(db, campaign_message_key(0, 0)))["status"] == "queued"
        slow.set()
        await smtp_sink.wait_for(6)
    finally:
        slow.set()
        await service.stop()
    assert (await message_row(db, campaign_message_key(0, 0)))["status"] == "sent"


async def test_connections_are_reused(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink, workers=1)), db, clock)
    for i in range(6):
        await add_user(db, f"u{i}", clock, email=f"u{i}@example.test", name=f"U{i}")
        await queue(db, clock, f"u{i}", run_id=i)

    await service.deliver_due()
    await service.stop()

    assert len(smtp_sink.handler.received) == 6
    assert smtp_sink.handler.connections == 1


async def test_pool_opens_at_most_pool_size_connections(db, clock, make_config, smtp_sink):
    email = smtp_email(smtp_sink, workers=8)
    email["smtp"]["pool_size"] = 2
    service = MessageService(make_config(email=email), db, clock)
    for i in range(16):
        await add_user(db, f"u{i}", clock, email=f"u{i}@example.test", name=f"U{i}")
        await queue(db, clock, f"u{i}", run_id=i)

    await service.deliver_due()
    await service.stop()

    assert len(smtp_sink.handler.received) == 16
    assert smtp_sink.handler.connections <= 2


async def test_connection_refused_is_temporary(db, clock, make_config, smtp_sink):
    port = smtp_sink.port
    smtp_sink.server.close()
    await smtp_sink.server.wait_closed()
    email = smtp_email(smtp_sink)
    email["smtp"]["port"] = port
    service = MessageService(make_config(email=email), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert row["attempts"] == 1
    assert "connect" in row["last_error"]


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_modes_with_login(db, clock, make_config, tmp_path, monkeypatch, mode):
    cert, key_file = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)

    if mode == "starttls":
        sink = await start_sink(tls_context=context, require_starttls=True, authenticator=authenticator)
    else:
        sink = await start_sink(ssl=context, authenticator=authenticator, auth_require_tls=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    email = smtp_email(sink)
    email["smtp"].update(tls=mode, username="mailer", password="s3cret")
    service = MessageService(make_config(email=email), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")
    try:
        await service.deliver_due()
        await service.stop()
    finally:
        sink.server.close()

    assert (await message_row(db, key))["status"] == "sent"
    assert logins == [(b"mailer", b"s3cret")]
    assert len(sink.handler.received) == 1


async def test_wrong_password_is_retried(db, clock, make_config, tmp_path, monkeypatch):
    cert, key_file = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    sink = await start_sink(tls_context=context, authenticator=lambda *args: AuthResult(success=False, handled=False))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    email = smtp_email(sink)
    email["smtp"].update(tls="starttls", username="mailer", password="wrong")
    service = MessageService(make_config(email=email), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")
    try:
        await service.deliver_due()
        await service.stop()
    finally:
        sink.server.close()

    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert "check email.smtp.username and email.smtp.password" in row["last_error"]


async def test_untrusted_certificate_is_not_sent_to(db, clock, make_config, tmp_path):
    cert, key_file = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    sink = await start_sink(tls_context=context)
    email = smtp_email(sink)
    email["smtp"].update(tls="starttls")
    service = MessageService(make_config(email=email), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    key = await queue(db, clock, "u1")
    try:
        await service.deliver_due()
        await service.stop()
    finally:
        sink.server.close()

    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert "certificate" in row["last_error"].lower()
    assert sink.handler.received == []


def test_classify_smtp_errors():
    import aiosmtplib

    assert classify_smtp_error(aiosmtplib.SMTPDataError(451, "later")).temporary
    assert not classify_smtp_error(aiosmtplib.SMTPDataError(554, "no")).temporary
    assert not classify_smtp_error(aiosmtplib.SMTPSenderRefused(553, "bad sender", "a@b.test")).temporary
    assert classify_smtp_error(aiosmtplib.SMTPServerDisconnected("gone")).temporary
    assert classify_smtp_error(aiosmtplib.SMTPReadTimeoutError("slow")).temporary
    assert classify_smtp_error(ConnectionResetError("reset")).temporary
    refused = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no", "a@b.test")])
    assert not classify_smtp_error(refused).temporary
    deferred = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(452, "full", "a@b.test")])
    assert classify_smtp_error(deferred).temporary

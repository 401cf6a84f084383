"""Mail goes to the address the user has when it is sent."""

from __future__ import annotations

from segflowd.messages.service import MessageService
from segflowd.services import Services
from test_message_support import add_event, add_user, clock, make_config, message_row, smtp_email, smtp_sink  # noqa: F401


async def queue_receipt(db, clock, services, user_id: str) -> str:
    event = await add_event(db, user_id, "purchase", {"order": "A-1", "total": 9}, clock)
    async with db.transaction() as cur:
        keys = await services.messages.on_event(cur, event, clock.now())
    return keys[0]


async def test_identify_after_event_supplies_address(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink))
    services = Services.build(config, db, clock)
    # The event arrives before the identify that carries the address.
    await add_user(db, "late", clock)
    key = await queue_receipt(db, clock, services, "late")
    await add_user(db, "late", clock, email="late@example.test", name="Late")

    service = MessageService(config, db, clock)
    await service.deliver_due()
    await service.stop()
    row = await message_row(db, key)
    assert row["status"] == "sent", row["last_error"]
    assert [m.rcpt_tos for m in smtp_sink.handler.received] == [["late@example.test"]]


async def test_changed_address_is_used(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink))
    services = Services.build(config, db, clock)
    await add_user(db, "mover", clock, email="old@example.test", name="Mo")
    key = await queue_receipt(db, clock, services, "mover")
    await add_user(db, "mover", clock, email="new@example.test", name="Mo")

    service = MessageService(config, db, clock)
    await service.deliver_due()
    await service.stop()
    assert (await message_row(db, key))["status"] == "sent"
    assert [m.rcpt_tos for m in smtp_sink.handler.received] == [["new@example.test"]]


async def test_missing_address_waits_for_identify(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, retry_base_seconds=2))
    services = Services.build(config, db, clock)
    await add_user(db, "early", clock)
    key = await queue_receipt(db, clock, services, "early")

    service = MessageService(config, db, clock)
    await service.deliver_due()
    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert "no email attribute yet" in row["last_error"]
    assert smtp_sink.handler.received == []

    await add_user(db, "early", clock, email="early@example.test", name="Early")
    clock.advance(seconds=3)
    await service.deliver_due()
    await service.stop()
    assert (await message_row(db, key))["status"] == "sent"
    assert [m.rcpt_tos for m in smtp_sink.handler.received] == [["early@example.test"]]


async def test_no_address_fails_after_max_attempts(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, max_attempts=2, retry_base_seconds=1))
    services = Services.build(config, db, clock)
    await add_user(db, "nobody", clock)
    key = await queue_receipt(db, clock, services, "nobody")

    service = MessageService(config, db, clock)
    await service.deliver_due()
    clock.advance(seconds=5)
    await service.deliver_due()
    await service.stop()
    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert "gave up after 2 attempts" in row["last_error"]
    assert "no email attribute yet" in row["last_error"]
    assert smtp_sink.handler.received == []


async def test_malformed_address_fails_at_once(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink))
    services = Services.build(config, db, clock)
    await add_user(db, "typo", clock, email="not-an-address", name="Ty")
    key = await queue_receipt(db, clock, services, "typo")

    service = MessageService(config, db, clock)
    await service.deliver_due()
    await service.stop()
    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert row["attempts"] == 0
    assert "not-an-address" in row["last_error"]

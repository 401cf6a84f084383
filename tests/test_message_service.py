"""MessageService: transactional queueing, the outbox provider, suppression, leases and workers."""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import timedelta

import pytest

from segflowd.messages.providers import OutboxProvider, outbox_file_name
from segflowd.messages.queue import (
    campaign_message_key,
    message_context,
    queue_message,
    transaction_message_key,
)
from segflowd.messages.service import MessageService
from segflowd.messages.store import claim_messages
from segflowd.model import Event
from test_message_support import (  # noqa: F401 - fixtures
    START,
    add_event,
    add_user,
    body,
    clock,
    make_config,
    message_row,
    smtp_email,
    smtp_sink,
)


async def queue_campaign(db, clock, user_id, *, template="welcome", run_id=1, step=0, params=None, user=None):
    async with db.transaction() as cur:
        from segflowd.users import get_user

        user = user or await get_user(cur, user_id)
        queued = await queue_message(
            cur,
            key=campaign_message_key(run_id, step),
            kind="campaign",
            user_id=user_id,
            template=template,
            context=message_context(user, campaign="onboarding", params=params),
            now=clock.now(),
            campaign="onboarding",
            run_id=run_id,
        )
    return queued


async def test_on_event_queues_transaction_message(db, clock, make_config):
    config = make_config()
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    event = await add_event(db, "u1", "purchase", {"order": "A-1", "total": 12}, clock)

    async with db.transaction() as cur:
        keys = await service.on_event(cur, event, clock.now())

    assert keys == [transaction_message_key("order-receipt", event.id)]
    row = await message_row(db, keys[0])
    assert row["kind"] == "transactional"
    assert row["status"] == "queued"
    assert row["template"] == "receipt"
    assert row["event_id"] == event.id
    assert row["context"]["user"] == {"email": "ana@example.test", "name": "Ana", "id": "u1"}
    assert row["context"]["event"] == {
        "id": event.id, "name": "purchase", "attributes": {"order": "A-1", "total": 12},
        "timestamp": "2026-03-02T09:00:00.000000Z",
    }
    assert row["context"]["campaign"] is None
    assert row["context"]["params"] == {}


async def test_on_event_twice_queues_once(db, clock, make_config):
    service = MessageService(make_config(), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    event = await add_event(db, "u1", "purchase", {"order": "A-1"}, clock)

    for _ in range(2):
        async with db.transaction() as cur:
            await service.on_event(cur, event, clock.now())

    rows = await db.fetch_all("SELECT message_key FROM messages")
    assert len(rows) == 1


async def test_on_event_rolled_back_queues_nothing(db, clock, make_config):
    service = MessageService(make_config(), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    event = await add_event(db, "u1", "purchase", {"order": "A-1"}, clock)

    class Abort(Exception):
        pass

    try:
        async with db.transaction() as cur:
            await service.on_event(cur, event, clock.now())
            raise Abort
    except Abort:
        pass

    assert await db.fetch_all("SELECT id FROM messages") == []


async def test_on_event_other_name_queues_nothing(db, clock, make_config):
    service = MessageService(make_config(), db, clock)
    event = Event(7, "u1", "page_view", {}, clock.now())
    async with db.transaction() as cur:
        assert await service.on_event(cur, event, clock.now()) == []


async def test_on_event_queues_one_per_transaction(db, clock, make_config):
    config = make_config(transactions={
        "order-receipt": {"event": "purchase", "template": "receipt"},
        "order-thanks": {"event": "purchase", "template": "welcome"},
    })
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    event = await add_event(db, "u1", "purchase", {"order": "A-1"}, clock)
    async with db.transaction() as cur:
        keys = await service.on_event(cur, event, clock.now())
    assert keys == [f"transaction:order-receipt:{event.id}", f"transaction:order-thanks:{event.id}"]


async def test_outbox_writes_eml_named_by_key(db, clock, make_config):
    config = make_config()
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    event = await add_event(db, "u1", "purchase", {"order": "A-1", "total": 12}, clock)
    async with db.transaction() as cur:
        [key] = await service.on_event(cur, event, clock.now())

    assert await service.deliver_due() == 1

    path = config.email.outbox_dir / outbox_file_name(key)
    assert path.name == f"transaction%3Aorder-receipt%3A{event.id}.eml"
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Receipt for order A-1"
    assert message["To"] == "Ana <ana@example.test>"
    assert message["List-Unsubscribe"] is None
    assert body(message, "plain") == "Hi Ana, thanks for order A-1.\n"
    row = await message_row(db, key)
    assert row["status"] == "sent"
    assert row["attempts"] == 1
    assert row["provider_message_id"] == path.name
    assert row["message_id_header"] == message["Message-ID"]
    assert row["sent_at"] == START
    assert row["lease_until"] is None
    assert list(config.email.outbox_dir.glob(".*")) == []


def test_outbox_file_names_are_safe_and_distinct():
    names = {outbox_file_name(key) for key in ["a:b", "a_b", "a%3Ab", "../x", ".hidden", "a/b", "ü:1"]}
    assert len(names) == 7
    for name in names:
        assert "/" not in name
        assert not name.startswith(".")
        assert name.endswith(".eml")
    assert len(outbox_file_name("k" * 1000)) <= 220
    assert outbox_file_name("k" * 1000) != outbox_file_name("k" * 999)


async def test_campaign_mail_has_list_unsubscribe(db, clock, make_config):
    config = make_config()
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")

    await service.deliver_due()

    path = config.email.outbox_dir / outbox_file_name(queued.key)
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    list_unsubscribe = message["List-Unsubscribe"].strip()
    assert list_unsubscribe.startswith("<http://127.0.0.1:8080/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = body(message, "html")
    assert list_unsubscribe[1:-1] in html
    # No text template: the text part is derived from the HTML.
    text = body(message, "plain")
    assert "Hi Ana," in text
    assert "Unsubscribe (http://127.0.0.1:8080/unsubscribe/" in text


async def test_unsubscribed_user_gets_no_campaign_mail(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", unsubscribed=True)

    queued = await queue_campaign(db, clock, "u1")
    await service.deliver_due()
    await service.stop()

    assert queued.status == "suppressed"
    row = await message_row(db, queued.key)
    assert row["status"] == "suppressed"
    assert row["attempts"] == 0
    assert "unsubscribed" in row["last_error"]
    assert smtp_sink.handler.received == []


async def test_unsubscribe_after_queueing_suppresses(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")
    await add_user(db, "u1", clock, unsubscribed=True)

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, queued.key)
    assert row["status"] == "suppressed"
    assert smtp_sink.handler.received == []


async def test_unsubscribed_user_still_gets_transactional(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana", unsubscribed=True)
    event = await add_event(db, "u1", "purchase", {"order": "A-1", "total": 3}, clock)
    async with db.transaction() as cur:
        [key] = await service.on_event(cur, event, clock.now())

    await service.deliver_due()
    await service.stop()

    assert (await message_row(db, key))["status"] == "sent"
    assert len(smtp_sink.handler.received) == 1


async def test_deleted_user_is_suppressed(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")
    async with db.transaction() as cur:
        await cur.execute("DELETE FROM users WHERE id = 'u1'")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, queued.key)
    assert row["status"] == "suppressed"
    assert "no longer exists" in row["last_error"]
    assert smtp_sink.handler.received == []


async def test_invalid_email_fails_without_sending(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    bad = ["not-an-address", "a@b@", "ana@example.test\r\nBcc: x@example.test", "ana @example.test", "<ana@example.test>", 42]
    for i, value in enumerate(bad):
        await add_user(db, f"u{i}", clock, email=value)
        await queue_campaign(db, clock, f"u{i}", run_id=i)

    await service.deliver_due()
    await service.stop()

    rows = await db.fetch_all("SELECT status, last_error FROM messages ORDER BY run_id")
    assert [row["status"] for row in rows] == ["failed"] * len(bad)
    assert all("email attribute" in row["last_error"] for row in rows)
    assert smtp_sink.handler.data_commands == 0


async def test_undefined_variable_fails_and_never_reaches_sink(db, clock, make_config, smtp_sink):
    config = make_config(
        email=smtp_email(smtp_sink),
        templates={"broken": {"subject": "Hello", "html": "templates/broken.html.j2"}},
        files={"templates/broken.html.j2": "<p>Hi</p>\n<p>{{ user.name }} has {{ points }} points</p>\n"},
    )
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1", template="broken")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, queued.key)
    assert row["status"] == "failed"
    assert "'points' is undefined" in row["last_error"]
    assert "broken.html.j2, line 2" in row["last_error"]
    assert smtp_sink.handler.data_commands == 0


async def test_send_email_keywords_render(db, clock, make_config):
    config = make_config(
        templates={"nudge": {"subject": "{{ discount }} off, {{ user.name }}", "html": "templates/nudge.html.j2"}},
        files={"templates/nudge.html.j2": "<p>{{ discount }} for {{ campaign }}</p>"},
    )
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1", template="nudge", params={"discount": "10%"})

    await service.deliver_due()

    message = email.message_from_bytes(
        (config.email.outbox_dir / outbox_file_name(queued.key)).read_bytes(), policy=email.policy.default
    )
    assert message["Subject"] == "10% off, Ana"
    assert body(message, "html") == "<p>10% for onboarding</p>"


async def test_rendering_uses_user_at_sending(db, clock, make_config):
    config = make_config()
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")
    await add_user(db, "u1", clock, name="Changed Later")

    await service.deliver_due()

    data = (config.email.outbox_dir / outbox_file_name(queued.key)).read_bytes()
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == "Welcome, Changed Later!"



async def test_unknown_template_fails(db, clock, make_config):
    service = MessageService(make_config(), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1", template="gone")

    await service.deliver_due()

    row = await message_row(db, queued.key)
    assert row["status"] == "failed"
    assert "template 'gone'" in row["last_error"]
    assert "not defined" in row["last_error"]


async def test_message_id_stable_across_retries(db, clock, make_config, smtp_sink):
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")
    smtp_sink.handler.data_replies = ["451 4.3.0 try later"]

    await service.deliver_due()
    first = (await message_row(db, queued.key))["message_id_header"]
    clock.advance(hours=1)
    await service.deliver_due()
    await service.stop()

    [received] = smtp_sink.handler.received
    assert first is not None
    assert received.message["Message-ID"] == first


async def test_expired_lease_is_claimed_again(db, clock, make_config):
    config = make_config()
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")

    # A process claims the message and dies without recording anything.
    dead = await claim_messages(db, clock.now(), clock.now() + timedelta(minutes=2), 10)
    assert [m.key for m in dead] == [queued.key]
    service = MessageService(config, db, clock)
    assert await service.deliver_due() == 0

    clock.advance(minutes=2, seconds=1)
    assert await service.deliver_due() == 1
    assert (await message_row(db, queued.key))["status"] == "sent"


async def test_late_outcome_of_lost_lease_is_ignored(db, clock, make_config):
    config = make_config()
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    queued = await queue_campaign(db, clock, "u1")
    [stale] = await claim_messages(db, clock.now(), clock.now() + timedelta(minutes=2), 10)
    clock.advance(minutes=3)
    service = MessageService(config, db, clock)
    await service.deliver_due()

    from segflowd.messages.store import OutcomeWriter, mark_message_retry

    assert not await mark_message_retry(OutcomeWriter(db), stale, "late", None, clock.now())
    row = await message_row(db, queued.key)
    assert row["status"] == "sent"
    assert row["last_error"] is None


async def test_concurrent_claims_take_distinct_messages(db, clock, make_config):
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    for run in range(20):
        await queue_campaign(db, clock, "u1", run_id=run)

    lease = clock.now() + timedelta(minutes=1)
    batches = await asyncio.gather(*(claim_messages(db, clock.now(), lease, 5) for _ in range(6)))

    keys = [m.key for batch in batches for m in batch]
    assert len(keys) == 20
    assert len(set(keys)) == 20


async def test_workers_deliver_after_wake(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink), scheduler={"poll_interval": "1h"})
    service = MessageService(config, db, clock)
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    await service.start()
    try:
        await asyncio.sleep(0)  # the claim loop finds nothing and waits for a wake
        event = await add_event(db, "u1", "purchase", {"order": "A-7", "total": 1}, clock)
        async with db.transaction() as cur:
            [key] = await service.on_event(cur, event, clock.now())
        service.wake()
        [received] = await smtp_sink.wait_for(1)
    finally:
        await service.stop()
    assert received.message["Subject"] == "Receipt for order A-7"
    assert (await message_row(db, key))["status"] == "sent"


async def test_stop_releases_unstarted_messages(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, workers=1), scheduler={"poll_interval": "1h"})
    service = MessageService(config, db, clock)
    hold = asyncio.Event()
    smtp_sink.handler.hold["first@example.test"] = hold
    await add_user(db, "u1", clock, email="first@example.test", name="First")
    await add_user(db, "u2", clock, email="second@example.test", name="Second")
    first = await queue_campaign(db, clock, "u1", run_id=1)
    second = await queue_campaign(db, clock, "u2", run_id=2)

    await service.start()
    while smtp_sink.handler.data_commands == 0:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the send in hand is finished first
    hold.set()
    await stopping

    assert (await message_row(db, first.key))["status"] == "sent"
    row = await message_row(db, second.key)
    assert row["status"] == "queued"
    assert row["lease_until"] is None
    assert row["next_attempt_at"] == START
    assert len(smtp_sink.handler.received) == 1


async def test_outbox_provider_write_error_is_temporary(tmp_path):
    from segflowd.messages.compose import ComposedMessage, parse_address, parse_sender
    from segflowd.messages.providers import TemporaryFailure

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    provider = OutboxProvider(blocker / "outbox")
    message = ComposedMessage(
        parse_sender("Acme <a@acme.test>"), parse_address("b@example.test"), "s", "<p>h</p>", "t", START, "<x@acme.test>"
    )
    with pytest.raises(TemporaryFailure, match="cannot write"):
        await provider.send(message, "k")


async def test_two_processes_send_each_message_once(db, clock, make_config, smtp_sink):
    config = make_config(email=smtp_email(smtp_sink, workers=3), scheduler={"poll_interval": "50ms"})
    for run in range(40):
        await add_user(db, f"u{run}", clock, email=f"u{run}@example.test", name=f"U{run}")
        await queue_campaign(db, clock, f"u{run}", run_id=run)
    first, second = MessageService(config, db, clock), MessageService(config, db, clock)

    await first.start()
    await second.start()
    try:
        received = await smtp_sink.wait_for(40)
    finally:
        await first.stop()
        await second.stop()

    recipients = [r.rcpt_tos[0] for r in received]
    assert sorted(recipients) == sorted(f"u{run}@example.test" for run in range(40))
    rows = await db.fetch_all("SELECT status, attempts FROM messages")
    assert {(row["status"], row["attempts"]) for row in rows} == {("sent", 1)}


async def test_metrics_count_outcomes(db, clock, make_config, smtp_sink):
    from segflowd.metrics import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "sent": sample("segflowd_messages_total", kind="campaign", status="sent"),
        "failed": sample("segflowd_messages_total", kind="campaign", status="failed"),
        "suppressed": sample("segflowd_messages_total", kind="campaign", status="suppressed"),
        "temporary": sample("segflowd_send_attempts_total", provider="smtp", outcome="temporary"),
        "latency": sample("segflowd_delivery_latency_seconds_count", kind="campaign"),
    }
    service = MessageService(make_config(email=smtp_email(smtp_sink)), db, clock)
    smtp_sink.handler.data_replies = ["451 later"]
    await add_user(db, "ok", clock, email="ok@example.test", name="Ok")
    await add_user(db, "off", clock, email="off@example.test", name="Off", unsubscribed=True)
    await add_user(db, "bad", clock, name="Bad Email", email="not-an-address")
    for run, user in enumerate(["ok", "off", "bad"]):
        await queue_campaign(db, clock, user, run_id=run)

    await service.deliver_due()
    clock.advance(hours=1)
    await service.deliver_due()
    await service.stop()

    assert sample("segflowd_messages_total", kind="campaign", status="sent") - before["sent"] == 1
    assert sample("segflowd_messages_total", kind="campaign", status="failed") - before["failed"] == 1
    assert sample("segflowd_messages_total", kind="campaign", status="suppressed") - before["suppressed"] == 1
    assert sample("segflowd_send_attempts_total", provider="smtp", outcome="temporary") - before["temporary"] == 1
    assert sample("segflowd_delivery_latency_seconds_count", kind="campaign") - before["latency"] == 1


class CountingDatabase:
    """A Database that counts the transactions it opens."""

    def __init__(self, db):
        self.db = db
        self.transactions = 0

    def transaction(self):
        self.transactions += 1
        return self.db.transaction()


async def test_outcome_writer_shares_transactions(db, clock):
    from segflowd.messages.store import OutcomeWriter

    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    for run in range(10):
        await queue_campaign(db, clock, "u1", run_id=run)
    counting = CountingDatabase(db)
    writer = OutcomeWriter(counting)

    sql = "UPDATE messages SET last_error = %s WHERE message_key = %s"
    results = await asyncio.gather(*(writer.update(sql, (f"e{run}", campaign_message_key(run, 0))) for run in range(10)))
    missing = await writer.update(sql, ("x", "no-such-key"))

    assert results == [True] * 10
    assert missing is False
    assert counting.transactions == 2
    rows = await db.fetch_all("SELECT last_error FROM messages ORDER BY run_id")
    assert [row["last_error"] for row in rows] == [f"e{run}" for run in range(10)]


async def test_outcome_writer_error_reaches_every_waiter(db, clock):
    from segflowd.messages.store import OutcomeWriter

    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    await queue_campaign(db, clock, "u1", run_id=1)
    writer = OutcomeWriter(db)

    good = writer.update("UPDATE messages SET last_error = 'x' WHERE run_id = %s", (1,))
    bad = writer.update("UPDATE no_such_table SET x = 1 WHERE id = %s", (1,))
    outcomes = await asyncio.gather(good, bad, return_exceptions=True)

    assert all(isinstance(outcome, Exception) for outcome in outcomes)
    row = await message_row(db, campaign_message_key(1, 0))
    assert row["last_error"] is None  # rolled back with the batch


async def test_queue_rejects_values_too_long(db, clock):
    context = message_context({"id": "u1"})
    async with db.transaction() as cur:
        for overrides in ({"key": "k" * 256}, {"template": "t" * 256}, {"campaign": "c" * 256}):
            arguments = {"key": "k", "kind": "campaign", "user_id": "u1", "template": "t", "context": context,
                         "now": clock.now(), **overrides}
            with pytest.raises(ValueError, match="the maximum is 255"):
                await queue_message(cur, **arguments)
    assert await db.fetch_all("SELECT id FROM messages") == []


def test_message_context_rejects_reserved_keywords():
    with pytest.raises(ValueError, match="unsubscribe_url"):
        message_context({"id": "u1"}, params={"unsubscribe_url": "https://evil.test"})

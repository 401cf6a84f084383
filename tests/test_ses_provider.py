"""Delivery through SESv2 against moto's server mode on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy

import aiohttp
import botocore.exceptions
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.service import MessageService
from segflowd.messages.ses import classify_ses_error
from test_message_support import add_user, clock, make_config, message_row  # noqa: F401 - fixtures

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_server():
    """moto's SES on an ephemeral loopback port, for this module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def ses(moto_server, monkeypatch):
    """Dummy credentials, a fresh moto state, and the sender's domain verified."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    # Never ask an instance metadata service for credentials.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{moto_server}/moto-api/reset") as response:
            assert response.status == 200
    async with get_session().create_client("sesv2", region_name=REGION, endpoint_url=moto_server) as client:
        await client.create_email_identity(EmailIdentity="acme.test")
    return moto_server


def sent_messages():
    from moto.ses.models import ses_backends

    return ses_backends[ACCOUNT][REGION].sent_messages


def ses_email(endpoint_url):
    return {"provider": "ses", "ses": {"region": REGION, "endpoint_url": endpoint_url}, "max_per_second": 1000}


async def queue_for(db, clock, user_id, **attributes):
    await add_user(db, user_id, clock, **attributes)
    async with db.transaction() as cur:
        queued = await queue_message(
            cur, key=campaign_message_key(1, 0), kind="campaign", user_id=user_id, template="welcome",
            context=message_context({"id": user_id, **attributes}, campaign="news"), now=clock.now(),
            campaign="news", run_id=1,
        )
    return queued.key


async def test_ses_sends_raw_mime(db, clock, make_config, ses):
    service = MessageService(make_config(email=ses_email(ses)), db, clock)
    key = await queue_for(db, clock, "u1", email="ana+news@example.test", name="Ana Müller")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "sent"
    [sent] = sent_messages()
    assert row["provider_message_id"] == sent.id
    assert sent.source == "hello@acme.test"
    assert "ana+news@example.test" in sent.destinations
    message = email.message_from_string(sent.raw_data, policy=email.policy.default)
    assert message["Subject"] == "Welcome, Ana Müller!"
    assert message["Message-ID"] == row["message_id_header"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_ses_unverified_sender_fails_permanently(db, clock, make_config, ses):
    config = make_config(email={**ses_email(ses), "from": "Other <hello@unverified.test>"})
    service = MessageService(config, db, clock)
    key = await queue_for(db, clock, "u1", email="ana@example.test", name="Ana")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert "MessageRejected" in row["last_error"]
    assert sent_messages() == []


async def test_ses_idn_domain_is_sent_as_punycode(db, clock, make_config, ses):
    service = MessageService(make_config(email=ses_email(ses)), db, clock)
    key = await queue_for(db, clock, "u1", email="ana@bücher.example", name="Ana")

    await service.deliver_due()
    await service.stop()

    assert (await message_row(db, key))["status"] == "sent"
    [sent] = sent_messages()
    assert "ana@xn--bcher-kva.example" in sent.destinations


async def test_ses_unicode_local_part_fails_without_a_request(db, clock, make_config, ses):
    service = MessageService(make_config(email=ses_email(ses)), db, clock)
    key = await queue_for(db, clock, "u1", email="ünïcode@example.test", name="Ana")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "failed"
    assert "SES does not accept" in row["last_error"]
    assert sent_messages() == []


async def test_ses_unreachable_endpoint_is_temporary(db, clock, make_config, ses, unused_tcp_port):
    service = MessageService(make_config(email=ses_email(f"http://127.0.0.1:{unused_tcp_port}")), db, clock)
    key = await queue_for(db, clock, "u1", email="ana@example.test", name="Ana")

    await service.deliver_due()
    await service.stop()

    row = await message_row(db, key)
    assert row["status"] == "queued"
    assert row["attempts"] == 1
    assert "cannot reach SES" in row["last_error"]


def client_error(code, status):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendEmail"
    )


@pytest.mark.parametrize(
    ("code", "status", "temporary"),
    [
        ("TooManyRequestsException", 429, True),
        ("Throttling", 400, True),
        ("SendingPausedException", 400, True),
        ("InternalFailure", 500, True),
        ("ServiceUnavailable", 503, True),
        ("MessageRejected", 400, False),
        ("MailFromDomainNotVerifiedException", 400, False),
        ("BadRequestException", 400, False),
        ("AccountSuspendedException", 400, False),
        ("UnrecognizedClientException", 403, True),
    ],
)
def test_classify_ses_errors(code, status, temporary):
    failure = classify_ses_error(client_error(code, status))
    assert failure.temporary is temporary
    assert code in str(failure)


def test_classify_missing_credentials_and_network():
    assert classify_ses_error(botocore.exceptions.NoCredentialsError()).temporary
    assert classify_ses_error(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")).temporary
    assert classify_ses_error(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x")).temporary

"""Helpers for the message tests: an in-process SMTP sink with fault injection, configs, users.

This module holds no tests; test modules import its fixtures by name.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from segflowd.clock import FakeClock
from segflowd.config import Config, load_config
from segflowd.db import Database
from segflowd.model import Event
from segflowd.queries import QUERIES
from segflowd.users import upsert_user

START = datetime(2026, 3, 2, 9, 0, 0)

WELCOME_HTML = """\
<html><body>
<p>Hi {{ user.name }},</p>
<p>Welcome to Acme.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""

RECEIPT_HTML = """\
<p>Hi {{ user.name }}, thanks for order {{ event.attributes.order }} of {{ event.attributes.total }}.</p>
"""

RECEIPT_TEXT = """\
Hi {{ user.name }}, thanks for order {{ event.attributes.order }}.
"""

BASE_TEMPLATES = {
    "welcome": {"subject": "Welcome, {{ user.name }}!", "html": "templates/welcome.html.j2"},
    "receipt": {
        "subject": "Receipt for order {{ event.attributes.order }}",
        "html": "templates/receipt.html.j2",
        "text": "templates/receipt.txt.j2",
    },
}

BASE_FILES = {
    "templates/welcome.html.j2": WELCOME_HTML,
    "templates/receipt.html.j2": RECEIPT_HTML,
    "templates/receipt.txt.j2": RECEIPT_TEXT,
}


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]

    def raw_header(self, name: str) -> str:
        """One header's raw value, unfolded (CRLF removed), as the bytes carry it."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
        unfolded = head.replace("\r\n ", " ").replace("\r\n\t", "\t")
        for line in unfolded.split("\r\n"):
            field, _, value = line.partition(":")
            if field.lower() == name.lower():
                return value.strip()
        raise KeyError(name)

    @property
    def message(self) -> email.message.EmailMessage:
        """The parsed message; UTF-8 headers (RFC 6532) are decoded as UTF-8."""
        if self.data.isascii():
            return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]
        return email.message_from_string(self.data.decode("utf-8"), policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    """Accepts mail and records it, unless a fault is queued.

    `data_replies` are answered to DATA in order (None accepts); `drop_data`
    closes the connection at that many DATA commands instead of replying;
    `hold` maps a recipient to an event that DATA for it waits on.
    """

    received: list[Received] = field(default_factory=list)
    data_replies: list[str | None] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    drop_data: int = 0
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    data_commands: int = 0
    connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_commands += 1
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.hold:
                await self.hold[rcpt].wait()
        if self.drop_data > 0:
            self.drop_data -= 1
            server.transport.close()
            return "421 closing"
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if reply is not None:
                return reply
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content),
                     list(envelope.mail_options))
        )
        self.arrived.set()
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"


@dataclass
class SmtpSink:
    handler: SinkHandler
    server: asyncio.AbstractServer
    port: int

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` messages arrived; fail the test after `timeout` seconds."""

        async def arrived() -> None:
            while len(self.handler.received) < count:
                self.handler.arrived.clear()
                await self.handler.arrived.wait()

        await asyncio.wait_for(arrived(), timeout)
        return self.handler.received


async def start_sink(*, smtputf8: bool = True, ssl: Any = None, **smtp_options: Any) -> SmtpSink:
    """Serve SMTP on an ephemeral port of 127.0.0.1; `ssl` makes it implicit TLS."""
    handler = SinkHandler()
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        handler.connections += 1
        return SMTP(handler, enable_SMTPUTF8=smtputf8, hostname="sink.test", **smtp_options)

    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=ssl)
    port = server.sockets[0].getsockname()[1]
    return SmtpSink(handler, server, port)


@pytest.fixture
async def smtp_sink():
    """An SMTP server on 127.0.0.1 in the test's event loop, closed after the test."""
    sink = await start_sink()
    yield sink
    sink.server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make_config(write_config: Callable[..., Path]) -> Callable[..., Config]:
    """Write and load a config with the base templates; keyword sections replace or extend parts of it."""

    def make(
        *,
        email: dict[str, Any] | None = None,
        templates: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
        transactions: dict[str, Any] | None = None,
        **sections: Any,
    ) -> Config:
        email_section = {"from": "Acme <hello@acme.test>", "provider": "outbox", "outbox_dir": "outbox"}
        email_section.update(email or {})
        overrides = {
            "email": email_section,
            "templates": {**BASE_TEMPLATES, **(templates or {})},
            "transactions": transactions if transactions is not None else {
                "order-receipt": {"event": "purchase", "template": "receipt"},
            },
            **sections,
        }
        all_files = {**BASE_FILES, **{k: textwrap.dedent(v) for k, v in (files or {}).items()}}
        return load_config(write_config(overrides, all_files), extend_sys_path=False)

    return make


def smtp_email(sink: SmtpSink, **extra: Any) -> dict[str, Any]:
    """The email section for sending to the sink over SMTP."""
    section: dict[str, Any] = {
        "provider": "smtp",
        "smtp": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "timeout_seconds": 10},
        "max_per_second": 10000,
    }
    section.update(extra)
    return section


async def add_user(db: Database, user_id: str, clock: FakeClock, **attributes: Any) -> None:
    async with db.transaction() as cur:
        await upsert_user(cur, user_id, attributes, clock.now())


async def add_event(db: Database, user_id: str, name: str, attributes: dict[str, Any], clock: FakeClock) -> Event:
    """Store an event the way ingest does and return it."""
    from segflowd.db import dump_json

    async with db.transaction() as cur:
        await cur.execute(QUERIES.insert_event, (user_id, name, dump_json(attributes), clock.now(), clock.now()))
        event_id = cur.lastrowid
    return Event(event_id, user_id, name, attributes, clock.now())


async def message_row(db: Database, key: str) -> dict[str, Any]:
    from segflowd.messages.store import get_message

    row = await get_message(db, key)
    assert row is not None, f"no message with key {key!r}"
    return row


def body(message: email.message.EmailMessage, subtype: str) -> str:
    """The decoded text of the `plain` or `html` part, with LF line ends."""
    return message.get_body((subtype,)).get_content().replace("\r\n", "\n")


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in `folder`."""
    import ipaddress
    from datetime import timedelta as _timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _timedelta(days=1))
        .not_valid_after(now + _timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path

"""Headers as they arrive at an SMTP server: injection, encoding, and addresses delivered as given."""

from __future__ import annotations

import email.header
import email.utils

import pytest

from segflowd.messages.compose import InvalidAddress, one_line, parse_address, parse_sender
from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.service import MessageService
from segflowd.users import get_user
from test_message_support import (  # noqa: F401 - fixtures
    add_user,
    clock,
    make_config,
    message_row,
    smtp_email,
    smtp_sink,
    start_sink,
)

def decode_address(raw: str) -> tuple[str, str]:
    """Decode an address header as RFC 2047 says: whitespace between adjacent encoded words is dropped."""
    [(name, address)] = email.utils.getaddresses([raw])
    return str(email.header.make_header(email.header.decode_header(name))), address


HEADLINE = {
    "subject": "{{ user.headline }}",
    "html": "templates/headline.html.j2",
}
HEADLINE_FILES = {"templates/headline.html.j2": "<p>{{ user.headline }}</p>"}


async def send_one(db, clock, config, user_id="u1", **attributes):
    """Store a user, queue one campaign message with the headline template, deliver it."""
    await add_user(db, user_id, clock, **attributes)
    async with db.transaction() as cur:
        user = await get_user(cur, user_id)
        await queue_message(
            cur, key=campaign_message_key(1, 0), kind="campaign", user_id=user_id, template="headline",
            context=message_context(user, campaign="c"), now=clock.now(), campaign="c", run_id=1,
        )
    service = MessageService(config, db, clock)
    await service.deliver_due()
    await service.stop()
    return await message_row(db, campaign_message_key(1, 0))


def headline_config(make_config, sink, **email):
    return make_config(email=smtp_email(sink, **email), templates={"headline": HEADLINE}, files=HEADLINE_FILES)


@pytest.mark.parametrize("separator", ["\r\n", "\n", "\r", "\u2028", "\r\n\t", "\x00"])
async def test_crlf_in_name_adds_no_header(db, clock, make_config, smtp_sink, separator):
    config = headline_config(make_config, smtp_sink)
    name = f"Ana{separator}Bcc: x@example.test"
    row = await send_one(db, clock, config, email="ana@example.test", name=name, headline=f"Hi{separator}Bcc: y@example.test")

    assert row["status"] == "sent"
    [received] = smtp_sink.handler.received
    assert received.rcpt_tos == ["ana@example.test"]
    message = received.message
    assert message.get_all("Bcc") is None
    assert message["To"].addresses[0].addr_spec == "ana@example.test"
    assert message["To"].addresses[0].display_name == "Ana Bcc: x@example.test"
    assert message["Subject"] == "Hi Bcc: y@example.test"
    header_block = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc" not in header_block
    assert b"\rBcc" not in header_block


@pytest.mark.parametrize(
    "text",
    [
        "ご注文ありがとうございます。発送は明日です",
        "🎉 Party time 🎈 with 👩‍👩‍👧 and 🇯🇵",
        "Crème brûlée à l'été, señor Müller — ça va?",
        "Ωμέγα: Привет, مرحبا, שלום",
        "A long subject " + "with many words and ümlauts " * 8,
        'Quotes "inside" and (parens), commas; <angles>',
    ],
)
async def test_non_ascii_headers_decode_back(db, clock, make_config, smtp_sink, text):
    config = headline_config(make_config, smtp_sink)
    row = await send_one(db, clock, config, email="ana@example.test", name=text.strip(), headline=text.strip())

    assert row["status"] == "sent"
    [received] = smtp_sink.handler.received
    assert received.data.split(b"\r\n\r\n", 1)[0].isascii()
    message = received.message
    assert message["Subject"] == text.strip()
    name, address = decode_address(received.raw_header("To"))
    assert name == text.strip()
    assert address == "ana@example.test"
    if len(text.strip().encode()) <= 45:
        # One encoded word, which even readers that keep the space between
        # adjacent encoded words decode exactly.
        assert message["To"].addresses[0].display_name == text.strip()


@pytest.mark.parametrize("name", ["山田商店", "Café Ünïcode 🎉", "Acme, Inc."])
async def test_sender_display_name_decodes_back(db, clock, make_config, smtp_sink, name):
    quoted = '"' + name + '"' if "," in name else name
    config = headline_config(make_config, smtp_sink, **{"from": f"{quoted} <hello@acme.test>"})
    await send_one(db, clock, config, email="ana@example.test", headline="x")

    [received] = smtp_sink.handler.received
    sender = received.message["From"].addresses[0]
    assert sender.display_name == name
    assert sender.addr_spec == "hello@acme.test"
    assert received.mail_from == "hello@acme.test"


@pytest.mark.parametrize(
    "address",
    ["ana+news@example.test", "ana+news@bücher.example", "ünïcode@bücher.example", "ana.o'neil+x=y@sub.example.test"],
)
async def test_addresses_delivered_as_given(db, clock, make_config, smtp_sink, address):
    config = headline_config(make_config, smtp_sink)
    row = await send_one(db, clock, config, email=address, name="Ana", headline="hello")

    assert row["status"] == "sent"
    [received] = smtp_sink.handler.received
    assert received.rcpt_tos == [address]
    assert received.message["To"].addresses[0].addr_spec == address
    assert ("SMTPUTF8" in received.mail_options) == (not address.isascii())


async def test_idn_domain_without_smtputf8_uses_punycode(db, clock, make_config):
    sink = await start_sink(smtputf8=False)
    try:
        config = headline_config(make_config, sink)
        row = await send_one(db, clock, config, email="ana+news@bücher.example", name="Ana", headline="hello")
    finally:
        sink.server.close()

    assert row["status"] == "sent"
    [received] = sink.handler.received
    assert received.rcpt_tos == ["ana+news@xn--bcher-kva.example"]
    assert received.message["To"].addresses[0].addr_spec == "ana+news@xn--bcher-kva.example"
    assert received.data.isascii()


async def test_unicode_local_part_without_smtputf8_fails(db, clock, make_config):
    sink = await start_sink(smtputf8=False)
    try:
        config = headline_config(make_config, sink)
        row = await send_one(db, clock, config, email="ünïcode@example.test", name="Ana", headline="hello")
    finally:
        sink.server.close()

    assert row["status"] == "failed"
    assert "SMTPUTF8" in row["last_error"]
    assert sink.handler.data_commands == 0


@pytest.mark.parametrize(
    "value",
    ["", "plain", "@example.test", "ana@", "ana@@example.test", "ana@exa mple.test", "ana@-bad-.test",
     "a..b@example.test", ".ana@example.test", "ana@example.test\r\nBcc: x@y.test", "Ana <ana@example.test>",
     "ana@[127.0.0.1]", "\"quoted\"@example.test", "x" * 65 + "@example.test", None, 7, ["ana@example.test"]],
)
def test_invalid_addresses_are_rejected(value):
    with pytest.raises(InvalidAddress):
        parse_address(value)


def test_parse_sender_forms():
    assert parse_sender("hello@acme.test").address == "hello@acme.test"
    assert parse_sender("Acme <hello@acme.test>").display_name == "Acme"
    assert parse_sender('"Acme, Inc." <hello@acme.test>').display_name == "Acme, Inc."
    with pytest.raises(InvalidAddress):
        parse_sender("Acme <not an address>")


def test_one_line_removes_every_line_break():
    assert one_line("a\r\nb\nc\rd\u2028e\u2029f\x85g\x0bh\x0ci\x00j") == "a b c d e f g h i j"
    assert one_line("  padded   out  ") == "padded out"

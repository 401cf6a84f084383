"""The MIME body: both parts decode back exactly, whatever the text, and stay 7-bit clean."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime

import pytest

from segflowd.messages.compose import ComposedMessage, parse_address, parse_sender
from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.service import MessageService
from test_message_support import add_user, clock, make_config, smtp_email, smtp_sink  # noqa: F401 - fixtures

BODIES = {
    "ascii": "Hello Ana,\nsee you soon.\n",
    "no final newline": "Hello",
    "empty": "",
    "accents": "Crème brûlée à l'été — ça va?\nOui.\n",
    "japanese": "ご注文ありがとうございます。\n発送は明日です。\n",
    "emoji": "🎉🎈 " * 40,
    "long line": "word " * 400,
    "long ascii line": "x" * 2000,
    "crlf and cr": "one\r\ntwo\rthree\n",
    "dots": ".\n..\n.hidden\n",
    "trailing spaces": "end with spaces   \nand tabs\t\n",
    "equals and boundary-like": "=_segflowd_ =3D =\n--=_segflowd_abc--\n",
    "from line": "From here on\n>From quoted\n",
}


def build(text, html):
    return ComposedMessage(
        sender=parse_sender("Acme <hello@acme.test>"),
        recipient=parse_address("ana@example.test"),
        subject="s",
        html=html,
        text=text,
        date=datetime(2026, 3, 2, 9, 0),
        message_id="<id@acme.test>",
    )


def parts(data: bytes):
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    return message, plain, html


def normalized(text):
    return text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("name", sorted(BODIES))
def test_body_round_trip(name):
    text = BODIES[name]
    data = build(text, f"<p>{text}</p>").as_bytes()

    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    message, plain, html = parts(data)
    assert message.defects == []
    assert plain.get_content_type() == "text/plain"
    assert normalized(plain.get_content()) == normalized(text)
    assert normalized(html.get_content()) == normalized(f"<p>{text}</p>")


def test_transfer_encodings_fit_the_text():
    for text, encoding in [("plain ascii\n", "7bit"), ("mostly ascii, one é\n", "quoted-printable"),
                           ("日本語のテキスト\n", "base64")]:
        _, plain, _ = parts(build(text, "<p>x</p>").as_bytes())
        assert plain["Content-Transfer-Encoding"] == encoding


async def test_dot_lines_survive_smtp(db, clock, make_config, smtp_sink):
    config = make_config(
        email=smtp_email(smtp_sink),
        templates={"dots": {"subject": "x", "html": "templates/dots.html.j2", "text": "templates/dots.txt.j2"}},
        files={"templates/dots.html.j2": "<p>.</p>", "templates/dots.txt.j2": ".\n..\n.x\n"},
    )
    await add_user(db, "u1", clock, email="ana@example.test")
    async with db.transaction() as cur:
        await queue_message(
            cur, key=campaign_message_key(1, 0), kind="campaign", user_id="u1", template="dots",
            context=message_context({"id": "u1", "email": "ana@example.test"}), now=clock.now(), run_id=1,
        )
    service = MessageService(config, db, clock)
    await service.deliver_due()
    await service.stop()

    [received] = smtp_sink.handler.received
    _, plain, _ = parts(received.data)
    assert normalized(plain.get_content()) == ".\n..\n.x\n"

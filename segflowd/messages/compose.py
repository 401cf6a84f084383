"""Build a message's MIME form: headers, and a multipart/alternative body of text and HTML.

The bytes are written here instead of with the standard library's `email`
package, which needs about 2 ms of CPU per message for this structure (10
times the Jinja2 rendering, measured by bench/messages.py), and whose
header folder can add or drop a space between encoded words.

Header values that come from user data (the recipient's name, the rendered
subject) are reduced to one line first, so a CR or LF in them can never
start a new header. A non-ASCII subject or display name is written whole
as RFC 2047 encoded words, which every reader decodes back exactly. Both
body parts are 7-bit clean (7bit, quoted-printable or base64), so they pass
servers without 8BITMIME.
An address with a non-ASCII domain goes out as given when the SMTP server
offers SMTPUTF8, and with the domain in IDNA (punycode) form otherwise. A
non-ASCII local part needs SMTPUTF8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

# Control characters and Unicode line separators: none may reach a header.
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
# RFC 5322 atext, plus any non-ASCII character (RFC 6532) other than controls.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+)*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class InvalidAddress(ValueError):
    """An email address that cannot be used; the message explains why."""


def one_line(value: str) -> str:
    """Replace line breaks and control characters with single spaces, and trim the value."""
    return _SPACES.sub(" ", _LINE_BREAKS.sub(" ", value)).strip()


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address; the domain is kept as given (Unicode)."""

    display_name: str
    local_part: str
    domain: str

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def ascii_domain(self) -> str:
        return self.domain.encode("idna").decode("ascii")

    @property
    def needs_smtputf8(self) -> bool:
        """True if the local part is non-ASCII, which no ASCII form can carry."""
        return not self.local_part.isascii()

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()

    def wire_address(self, smtputf8: bool) -> str:
        """Return the address for the SMTP envelope and headers: as given, or with an IDNA domain."""
        if smtputf8 or self.is_ascii:
            return self.address
        if self.needs_smtputf8:
            raise InvalidAddress(
                f"address {self.address!r} has a non-ASCII local part, which needs an SMTP server "
                "that supports SMTPUTF8"
            )
        return f"{self.local_part}@{self.ascii_domain}"


def parse_address(value: object, *, display_name: object = None, field_name: str = "email") -> Mailbox:
    """Check a bare address such as `ana+news@bücher.example`; raise InvalidAddress naming the problem.

    Only the dot-atom form is accepted: no quoted local parts, no address
    literals, no display name or angle brackets inside the value.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"{field_name} must be a string such as ana@example.com, got {type(value).__name__} {value!r}")
    address = value.strip()
    if not address:
        raise InvalidAddress(f"{field_name} is empty; set it to an address such as ana@example.com")
    if _LINE_BREAKS.search(address) or any(c.isspace() for c in address):
        raise InvalidAddress(f"{field_name} {value!r} contains spaces or control characters")
    if len(address.encode("utf-8")) > 254:
        raise InvalidAddress(f"{field_name} {value!r} is longer than 254 bytes")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"{field_name} {value!r} is not an address: expected local-part@domain, such as ana@example.com")
    if not _LOCAL_PART.match(local) or len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"{field_name} {value!r} has an invalid local part {local!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidAddress(f"{field_name} {value!r} has an invalid domain {domain!r}") from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"{field_name} {value!r} has an invalid domain {domain!r}")
    name = one_line(display_name) if isinstance(display_name, str) else ""
    return Mailbox(display_name=name, local_part=local, domain=domain)


def parse_sender(value: str) -> Mailbox:
    """Parse `email.from`, such as `Acme <hello@acme.test>` or a bare address."""
    text = value.strip()
    match = re.fullmatch(r"(.*?)\s*<([^<>]+)>", text)
    if match:
        name = match.group(1).strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return parse_address(match.group(2), display_name=name, field_name="email.from")
    return parse_address(text, field_name="email.from")


def message_id_for(message_key: str, row_id: int, created_at: datetime, sender: Mailbox) -> str:
    """Return a Message-ID that stays the same across retries, so a receiver can drop a repeated copy."""
    digest = hashlib.sha256(f"{row_id}:{message_key}:{created_at.isoformat()}".encode()).hexdigest()[:32]
    return f"<{digest}@{sender.ascii_domain}>"


@dataclass(frozen=True)
class ComposedMessage:
    """Everything that goes on the wire for one message, before its MIME form is chosen."""

    sender: Mailbox
    recipient: Mailbox
    subject: str
    html: str
    text: str
    date: datetime
    message_id: str
    list_unsubscribe: str | None = None

    @property
    def needs_smtputf8(self) -> bool:
        return self.sender.needs_smtputf8 or self.recipient.needs_smtputf8

    @property
    def has_utf8_address(self) -> bool:
        return not (self.sender.is_ascii and self.recipient.is_ascii)

    def as_bytes(self, smtputf8: bool = False) -> bytes:
        """Serialize the message as sent: CRLF line ends, ASCII headers apart from addresses, a 7-bit body.

        Without `smtputf8`, a non-ASCII domain is written in IDNA form and a
        non-ASCII local part raises InvalidAddress. With it, addresses are
        kept as given, in UTF-8 (RFC 6532).
        """
        lines = [
            _address_field("From", self.sender, self.sender.wire_address(smtputf8)),
            _address_field("To", self.recipient, self.recipient.wire_address(smtputf8)),
            _text_field("Subject", self.subject),
            f"Date: {format_datetime(self.date.replace(tzinfo=timezone.utc))}",
            f"Message-ID: {self.message_id}",
        ]
        if self.list_unsubscribe is not None:
            # RFC 8058: a one-click POST to this URL unsubscribes.
            lines.append(_fold("List-Unsubscribe:", [f"<{self.list_unsubscribe}>"]))
            lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        # "=_" cannot occur in quoted-printable or base64 output; a 7bit part
        # is checked, since it is the text itself.
        boundary = "=_segflowd_" + secrets.token_hex(12)
        text, text_encoding = _encode_body(self.text)
        html, html_encoding = _encode_body(self.html)
        while boundary.encode() in text or boundary.encode() in html:
            boundary = "=_segflowd_" + secrets.token_hex(12)
        lines += [
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
        ]
        head = "\r\n".join(lines).encode("utf-8")
        delimiter = f"\r\n--{boundary}\r\n".encode()
        return b"".join([
            head,
            delimiter,
            f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: {text_encoding}\r\n\r\n'.encode(),
            text,
            delimiter,
            f'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: {html_encoding}\r\n\r\n'.encode(),
            html,
            f"\r\n--{boundary}--\r\n".encode(),
        ])


# Header lines are folded to at most 78 characters where the text allows.
_MAX_LINE = 78
# UTF-8 bytes per RFC 2047 encoded word: 45 bytes are 60 base64 characters,
# so a word (=?utf-8?b?...?=) is 72 characters, within the limit of 75. A
# display name of up to 45 bytes fits one word, which matters because some
# readers (Python's `email.headerregistry` among them) keep the space
# between adjacent encoded words in a display name, which RFC 2047 says to
# ignore.
_WORD_BYTES = 45
# Characters a display name may contain without quoting (RFC 5322 atext and space).
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*$")


def _encoded_words(text: str) -> list[str]:
    """Encode the text as base64 encoded words, each of whole characters.

    Readers ignore the whitespace between adjacent encoded words, so the
    text decodes back exactly, spaces included.
    """
    words, chunk = [], b""
    for character in text:
        encoded = character.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(word).decode('ascii')}?=" for word in words]


def _needs_encoding(text: str) -> bool:
    # ASCII text that looks like an encoded word would be decoded by readers.
    return not text.isascii() or "=?" in text


def _fold(start: str, tokens: list[str]) -> str:
    """Join tokens with spaces after `start`, breaking lines before a token that would pass the limit."""
    lines, line = [], start
    for token in tokens:
        if line != start and len(line) + 1 + len(token) > _MAX_LINE and line.strip():
            lines.append(line)
            line = " " + token
        else:
            line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines)


def _text_field(name: str, value: str) -> str:
    """Write an unstructured header such as Subject, on one logical line."""
    text = one_line(value)
    tokens = _encoded_words(text) if _needs_encoding(text) else text.split(" ")
    return _fold(f"{name}:", [token for token in tokens if token] or [""])


def _address_field(name: str, mailbox: Mailbox, address: str) -> str:
    """Write an address header: the display name as atoms, a quoted string or encoded words, then <address>."""
    display = one_line(mailbox.display_name)
    if not display:
        return f"{name}: {address}"
    if _needs_encoding(display):
        phrase = _encoded_words(display)
    elif _ATEXT.match(display):
        phrase = display.split(" ")
    else:
        phrase = ['"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _fold(f"{name}:", [*phrase, f"<{address}>"])


def _encode_body(body: str) -> tuple[bytes, str]:
    """Encode a body part with CRLF line ends; return the bytes and the Content-Transfer-Encoding.

    7bit for ASCII with lines of at most 998 characters, quoted-printable
    for mostly-ASCII text, base64 for the rest.
    """
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and all(len(line) <= 998 for line in text.split("\n")):
        return text.replace("\n", "\r\n").encode("ascii"), "7bit"
    data = text.encode("utf-8")
    non_ascii = len(data) - len(text)
    if non_ascii * 4 < len(text):
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        return encoded.replace(b"\n", b"\r\n"), "quoted-printable"
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n"), "base64"

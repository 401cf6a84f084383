"""Build a message's MIME form with the standard library's `email` package.

Header values that come from user data (the recipient's name, the rendered
subject) are reduced to one line first, so a CR or LF in them can never
start a new header. Non-ASCII text in headers is encoded per RFC 2047.
An address with a non-ASCII domain goes out with the domain in IDNA
(punycode) form unless the SMTP server offers SMTPUTF8, in which case it
goes out as given; a non-ASCII local part needs SMTPUTF8.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

# Control characters and Unicode line separators: none may reach a header.
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
# RFC 5322 atext, plus any non-ASCII character (RFC 6532) other than controls.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+)*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class InvalidAddress(ValueError):
    """An email address that cannot be used; the message says why."""


def one_line(value: str) -> str:
    """The value with line breaks and control characters turned into single spaces, trimmed."""
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
        """The address for the SMTP envelope and headers: as given, or with an IDNA domain."""
        if smtputf8 or self.is_ascii:
            return self.address
        if self.needs_smtputf8:
            raise InvalidAddress(
                f"address {self.address!r} has a non-ASCII local part, which needs an SMTP server "
                "that supports SMTPUTF8"
            )
        return f"{self.local_part}@{self.ascii_domain}"


def parse_address(value: object, *, display_name: object = None, what: str = "email") -> Mailbox:
    """Check a bare address such as `ana+news@bücher.example`; raise InvalidAddress naming the problem.

    Only the dot-atom form is accepted: no quoted local parts, no address
    literals, no display name or angle brackets inside the value.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"{what} must be a string such as ana@example.com, got {type(value).__name__} {value!r}")
    address = value.strip()
    if not address:
        raise InvalidAddress(f"{what} is empty; set it to an address such as ana@example.com")
    if _LINE_BREAKS.search(address) or any(c.isspace() for c in address):
        raise InvalidAddress(f"{what} {value!r} contains spaces or control characters")
    if len(address.encode("utf-8")) > 254:
        raise InvalidAddress(f"{what} {value!r} is longer than 254 bytes")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"{what} {value!r} is not an address: expected local-part@domain, such as ana@example.com")
    if not _LOCAL_PART.match(local) or len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"{what} {value!r} has an invalid local part {local!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidAddress(f"{what} {value!r} has an invalid domain {domain!r}") from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"{what} {value!r} has an invalid domain {domain!r}")
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
        return parse_address(match.group(2), display_name=name, what="email.from")
    return parse_address(text, what="email.from")


def message_id_for(message_key: str, row_id: int, created_at: datetime, sender: Mailbox) -> str:
    """A Message-ID that stays the same across retries, so a receiver can drop a repeated copy."""
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

    def to_email(self) -> EmailMessage:
        """The MIME message with ASCII headers; a non-ASCII address appears as a placeholder.

        `as_bytes` puts the real addresses in place. Display names and the
        subject are always RFC 2047 encoded words, so that every reader
        decodes them the same, even in a message with UTF-8 addresses.
        """
        message = EmailMessage(policy=policy.SMTP)
        message["From"] = _header_address(self.sender, _SENDER_PLACEHOLDER)
        message["To"] = _header_address(self.recipient, _RECIPIENT_PLACEHOLDER)
        message["Subject"] = one_line(self.subject)
        message["Date"] = format_datetime(self.date.replace(tzinfo=timezone.utc))
        message["Message-ID"] = self.message_id
        if self.list_unsubscribe is not None:
            # RFC 8058: a one-click POST to this URL unsubscribes.
            message["List-Unsubscribe"] = f"<{self.list_unsubscribe}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(self.text, subtype="plain", cte=_transfer_encoding(self.text))
        message.add_alternative(self.html, subtype="html", cte=_transfer_encoding(self.html))
        return message

    def as_bytes(self, smtputf8: bool = False) -> bytes:
        """The message as sent: CRLF line ends and a 7-bit body.

        Without `smtputf8`, a non-ASCII domain is sent in IDNA form and a
        non-ASCII local part raises InvalidAddress. With it, addresses are
        kept as given, as UTF-8 (RFC 6532).
        """
        data = self.to_email().as_bytes()
        header_end = data.index(b"\r\n\r\n")
        headers, body = data[:header_end], data[header_end:]
        for mailbox, placeholder in ((self.sender, _SENDER_PLACEHOLDER), (self.recipient, _RECIPIENT_PLACEHOLDER)):
            if not mailbox.is_ascii:
                headers = headers.replace(placeholder.encode(), mailbox.wire_address(smtputf8).encode("utf-8"), 1)
        return headers + body


# Stand-ins for non-ASCII addresses while the email package writes the
# headers, since its ASCII policy would turn them into encoded words, which
# are not allowed in an address. The .invalid top-level domain (RFC 2606)
# cannot belong to a real address.
_SENDER_PLACEHOLDER = "segflowd-sender@placeholder.invalid"
_RECIPIENT_PLACEHOLDER = "segflowd-recipient@placeholder.invalid"


def _header_address(mailbox: Mailbox, placeholder: str) -> Address:
    if mailbox.is_ascii:
        return Address(display_name=mailbox.display_name, username=mailbox.local_part, domain=mailbox.domain)
    local, _, domain = placeholder.partition("@")
    return Address(display_name=mailbox.display_name, username=local, domain=domain)


def _transfer_encoding(body: str) -> str:
    """7bit for short-lined ASCII; else quoted-printable for mostly-ASCII text, base64 for the rest.

    The body stays 7-bit clean, so it passes servers without 8BITMIME.
    """
    if body.isascii() and all(len(line) <= 998 for line in body.splitlines()):
        return "7bit"
    non_ascii = sum(1 for c in body if ord(c) > 127)
    return "quoted-printable" if non_ascii * 4 < len(body) else "base64"

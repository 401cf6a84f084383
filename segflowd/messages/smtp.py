"""The SMTP provider: aiosmtplib over a small pool of reused connections."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import AsyncIterator

import aiosmtplib

from segflowd.config import SmtpConfig
from segflowd.messages.compose import ComposedMessage, InvalidAddress
from segflowd.messages.providers import PermanentFailure, Provider, SendFailure, TemporaryFailure

log = logging.getLogger(__name__)

# A connection idle for longer than this is checked with NOOP before reuse,
# since servers close idle connections (Postfix after 300 s by default).
_IDLE_CHECK_SECONDS = 5.0
# Messages sent over one connection before it is closed and replaced: some
# servers refuse more than a fixed number per connection with a 4xx reply.
_MAX_MESSAGES_PER_CONNECTION = 100
# Maximum length of the server reply kept as the provider message id (a VARCHAR(255) column).
_MAX_ID_LENGTH = 255


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.sent = 0
        self.idle_since = time.monotonic()


def classify_smtp_error(exc: BaseException) -> SendFailure:
    """Turn an aiosmtplib or network error into a temporary or permanent failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusals = exc.recipients
        codes = [refusal.code for refusal in refusals]
        text = "; ".join(f"{refusal.recipient}: {refusal.code} {refusal.message}" for refusal in refusals)
        if codes and all(500 <= code < 600 for code in codes):
            return PermanentFailure(f"recipient refused: {text}")
        return TemporaryFailure(f"recipient refused for now: {text}")

    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # The message is fine; the credentials are not. Retrying lets a
        # corrected config deliver it.
        return TemporaryFailure(
            f"SMTP login failed ({exc.code} {exc.message}); check email.smtp.username and email.smtp.password"
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = type(exc).__name__.removeprefix("SMTP")
        if 500 <= exc.code < 600:
            return PermanentFailure(f"SMTP server rejected the message ({stage}): {exc.code} {exc.message}")
        return TemporaryFailure(f"SMTP server deferred the message ({stage}): {exc.code} {exc.message}")

    # Everything below failed before the server replied, so it is temporary.
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return TemporaryFailure(f"SMTP server lacks a needed extension: {exc}; check email.smtp.tls")
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return TemporaryFailure(f"SMTP server timed out: {exc or 'no reply in time'}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TemporaryFailure(f"SMTP connection closed by the server: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return TemporaryFailure(f"cannot connect to the SMTP server: {exc}")
    if isinstance(exc, ssl.SSLError):
        return TemporaryFailure(f"TLS error with the SMTP server: {exc}; check email.smtp.tls and the certificate")
    if isinstance(exc, (ConnectionError, OSError)):
        return TemporaryFailure(f"network error talking to the SMTP server: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return TemporaryFailure(f"SMTP error: {exc}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")


class SmtpProvider(Provider):
    """Sends over SMTP with TLS mode `none`, `starttls` or `tls` and optional login.

    At most `pool_size` connections are open, each used by one send at a
    time and kept for the next one. A connection that saw any error is
    closed, never reused.
    """

    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Connection] = []
        self._closed = False

    def _tls_context(self) -> ssl.SSLContext | None:
        # The system's CA bundle; SSL_CERT_FILE or SSL_CERT_DIR point it elsewhere.
        return ssl.create_default_context() if self.config.tls != "none" else None

    async def _open(self) -> _Connection:
        config = self.config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            timeout=config.timeout_seconds,
            use_tls=config.tls == "tls",
            start_tls=True if config.tls == "starttls" else False,
            tls_context=self._tls_context(),
        )
        await client.connect()
        try:
            # The extensions (SMTPUTF8, 8BITMIME) must be known before the
            # first message is built.
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if config.username:
                await client.login(config.username, config.password or "")
        except BaseException:
            client.close()
            raise
        log.debug("smtp connection opened", extra={"action": "smtp_connect", "host": config.host, "port": config.port})
        return _Connection(client)

    async def _is_usable(self, connection: _Connection) -> bool:
        if not connection.client.is_connected or connection.sent >= _MAX_MESSAGES_PER_CONNECTION:
            return False
        if time.monotonic() - connection.idle_since < _IDLE_CHECK_SECONDS:
            return True
        try:
            await connection.client.noop()
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            return False
        return True

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        async with self._slots:
            connection = None
            while self._idle:
                candidate = self._idle.pop()
                if await self._is_usable(candidate):
                    connection = candidate
                    break
                await _close(candidate)
            if connection is None:
                connection = await self._open()
            try:
                yield connection
            except BaseException:
                await _close(connection)
                raise
            if self._closed:
                await _close(connection)
            else:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)

    async def send(self, message: ComposedMessage, key: str) -> str:
        try:
            async with self._connection() as connection:
                client = connection.client
                use_utf8 = message.has_utf8_address and client.supports_extension("smtputf8")
                if message.needs_smtputf8 and not use_utf8:
                    raise PermanentFailure(
                        f"address {message.recipient.address!r} has a non-ASCII local part and the SMTP server "
                        "does not offer SMTPUTF8"
                    )
                options = []
                if use_utf8:
                    options.append("SMTPUTF8")
                    if client.supports_extension("8bitmime"):
                        options.append("BODY=8BITMIME")
                data = message.as_bytes(smtputf8=use_utf8)
                if client.supports_extension("size"):
                    options.insert(0, f"SIZE={len(data)}")
                connection.sent += 1
                reply = await _transaction(
                    client,
                    message.sender.wire_address(use_utf8),
                    message.recipient.wire_address(use_utf8),
                    data,
                    options,
                )
        except SendFailure:
            raise
        except InvalidAddress as exc:
            raise PermanentFailure(str(exc)) from exc
        except ssl.SSLError as exc:  # before ValueError: certificate errors are ValueErrors too
            raise classify_smtp_error(exc) from exc
        except ValueError as exc:  # aiosmtplib rejects an address it cannot send
            raise PermanentFailure(f"address cannot be sent over SMTP: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - every other error is classified below
            raise classify_smtp_error(exc) from exc
        return (reply or "accepted").strip()[:_MAX_ID_LENGTH]

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await _close(connection)


async def _transaction(client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, options: list[str]) -> str:
    """Send MAIL, RCPT and DATA for one recipient; return the server's reply to DATA.

    aiosmtplib's `sendmail` parses each address with `email.utils.parseaddr`
    twice, which was 15% of a send's CPU in bench/messages.py. Both
    addresses were checked by `parse_address` already (dot-atom form, no
    spaces, brackets or control characters), so they are sent as they are.
    """
    encoded_options = [option.encode("ascii") for option in options]
    response = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode("utf-8") + b">", *encoded_options)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    response = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode("utf-8") + b">")
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)]
        )
    response = await client.data(data)
    return response.message


async def _close(connection: _Connection) -> None:
    client = connection.client
    if client.is_connected:
        try:
            await asyncio.wait_for(client.quit(), timeout=2.0)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass
    client.close()

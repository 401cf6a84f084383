"""Email providers: the interface, failure classes, the outbox, and the factory.

A provider takes a composed message and returns the provider's id for it,
or raises TemporaryFailure (retried with backoff) or PermanentFailure
(recorded, never retried). Any other exception is a bug or an unforeseen
condition, and delivery treats it as temporary.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote

from segflowd.config import EmailConfig
from segflowd.messages.compose import ComposedMessage


class SendFailure(Exception):
    """A provider did not accept a message; `temporary` is True when a retry may succeed."""

    temporary = True

    def __init__(self, message: str) -> None:
        super().__init__(message)


class TemporaryFailure(SendFailure):
    """Worth retrying later: a 4xx reply, throttling, a dropped connection, a timeout."""

    temporary = True


class PermanentFailure(SendFailure):
    """Not worth retrying: a 5xx reply, a rejected message or address."""

    temporary = False


class Provider(ABC):
    """Sends composed messages; one instance is shared by all delivery workers of a process."""

    name: str = "provider"

    @abstractmethod
    async def send(self, message: ComposedMessage, key: str) -> str:
        """Hand the message to the provider; return the provider's id for it."""

    async def close(self) -> None:
        """Release connections and clients."""


def outbox_file_name(key: str) -> str:
    """A file name for a message key, safe on every filesystem, one-to-one with the key.

    Characters other than letters, digits, '-', '_' and '.' are
    percent-encoded, so `transaction:receipt:42` becomes
    `transaction%3Areceipt%3A42.eml`. A very long key is cut and ends in a
    hash of the whole key.
    """
    name = quote(key, safe="-_.")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 200:
        name = name[:180] + "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return name + ".eml"


class OutboxProvider(Provider):
    """Writes each message as an .eml file named by its key, for development and tests.

    The file is written under a temporary name and renamed, so a reader
    never sees half a message. A retry of the same message replaces its
    file. Addresses are kept as given (UTF-8 headers where needed).
    """

    name = "outbox"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _write(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    async def send(self, message: ComposedMessage, key: str) -> str:
        name = outbox_file_name(key)
        data = message.as_bytes(smtputf8=True)
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write {self.folder / name}: {exc.strerror or exc}") from exc
        return name


def make_provider(config: EmailConfig) -> Provider:
    """The provider that `email.provider` names."""
    if config.provider == "smtp":
        from segflowd.messages.smtp import SmtpProvider

        return SmtpProvider(config.smtp)
    if config.provider == "ses":
        from segflowd.messages.ses import SesProvider

        return SesProvider(config.ses)
    if config.provider == "outbox":
        return OutboxProvider(config.outbox_dir)
    raise ValueError(f"email.provider must be outbox, smtp or ses, got {config.provider!r}")

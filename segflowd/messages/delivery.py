"""Delivering one claimed message: checks, rendering, sending, and recording the outcome.

The outcome of every claimed message is one of:

- suppressed: campaign mail to a user who unsubscribed, or any mail to a
  user deleted since queueing; the provider is never asked;
- failed without an attempt: the template does not render, or the user
  has no valid `email` attribute;
- sent: the provider accepted it;
- retried: a temporary failure, tried again after an exponential backoff
  with jitter, until `email.max_attempts` attempts were made;
- failed: a permanent failure, or the last attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from segflowd.config import Config
from segflowd.db import Database
from segflowd.messages import store
from segflowd.messages.compose import ComposedMessage, InvalidAddress, Mailbox, message_id_for, parse_address, parse_sender
from segflowd.messages.metrics import DELIVERY_LATENCY, MESSAGES, SEND_ATTEMPTS, SEND_SECONDS
from segflowd.messages.providers import Provider, SendFailure, TemporaryFailure
from segflowd.messages.queue import CAMPAIGN, is_unsubscribed
from segflowd.messages.ratelimit import TokenBucket
from segflowd.messages.store import ClaimedMessage
from segflowd.messages.templates import TemplateError, Templates, template_context
from segflowd.messages.unsubscribe import unsubscribe_url

log = logging.getLogger(__name__)

# Maximum length of the error text stored in messages.last_error.
_MAX_ERROR_LENGTH = 2000


class MessageNotSendable(Exception):
    """The message cannot be built; it fails without reaching the provider."""


class MissingAddress(MessageNotSendable):
    """The user has no email attribute yet; an identify may still bring one, so this is retried."""


@dataclass(frozen=True)
class Outcome:
    """The result of delivering one claimed message: sent, retry, failed or suppressed."""

    status: str
    error: str | None = None


def compose_message(
    config: Config,
    templates: Templates,
    sender: Mailbox,
    *,
    key: str,
    row_id: int,
    kind: str,
    user_id: str,
    template: str,
    campaign: str | None,
    stored_context: dict[str, Any],
    created_at: Any,
    message_id_header: str | None = None,
    fallback_user: dict[str, Any] | None = None,
) -> ComposedMessage:
    """Render a stored message and build its MIME parts; raise MessageNotSendable with the reason.

    `fallback_user` is the user's row as it is now; its attributes are
    merged over the stored ones.
    """
    # The user's attributes as they are at sending win over those stored at
    # queueing, so that an identify arriving just after its event, or a
    # changed address, is used.
    user = {**(stored_context.get("user") or {"id": user_id}), **(fallback_user or {})}
    context_source = {**stored_context, "user": user}
    addressee = user
    if addressee.get("email") is None:
        raise MissingAddress(
            f"user {user_id!r} has no email attribute yet; "
            "set it with POST /api/user/{id} {\"attributes\": {\"email\": ...}}"
        )
    try:
        recipient = parse_address(
            addressee.get("email"), display_name=addressee.get("name"), field_name=f"user {user_id!r}'s email attribute"
        )
    except InvalidAddress as exc:
        hint = "" if addressee.get("email") is not None else "; set it with POST /api/user/{id} {\"attributes\": {\"email\": ...}}"
        raise MessageNotSendable(f"no valid recipient: {exc}{hint}") from exc
    url = unsubscribe_url(config, user_id)
    try:
        context = template_context(context_source, unsubscribe_url=url, campaign=campaign)
    except ValueError as exc:
        raise MessageNotSendable(str(exc)) from exc
    try:
        rendered = templates.render(template, context)
    except TemplateError as exc:
        raise MessageNotSendable(str(exc)) from exc
    return ComposedMessage(
        sender=sender,
        recipient=recipient,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        date=created_at,
        message_id=message_id_header or message_id_for(key, row_id, created_at, sender),
        list_unsubscribe=url if kind == CAMPAIGN else None,
    )


class Delivery:
    """Delivers claimed messages through one provider under the process's rate limit."""

    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Any,
        provider: Provider,
        *,
        bucket: TokenBucket | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.provider = provider
        self.writer = store.OutcomeWriter(db)
        self.templates = Templates(config)
        self.sender = parse_sender(config.email.from_address)
        self.bucket = bucket or TokenBucket(config.email.max_per_second)
        self.rng = rng or random.Random()
        # One provider call may take a few server round trips (connect,
        # TLS, login, MAIL, RCPT, DATA), each under the SMTP timeout.
        self.send_timeout = 4 * config.email.smtp.timeout_seconds

    def backoff(self, attempts: int) -> timedelta:
        """Return the wait before attempt `attempts + 1`: exponential, capped, with jitter in [50%, 100%]."""
        email = self.config.email
        delay = min(email.retry_max_seconds, email.retry_base_seconds * 2 ** max(0, attempts - 1))
        return timedelta(seconds=delay * self.rng.uniform(0.5, 1.0))

    async def deliver(self, message: ClaimedMessage) -> Outcome:
        """Deliver one claimed message and record the outcome.

        Provider errors are recorded on the message, not raised; a database
        error while recording raises, and the message is claimed again when
        its lease ends.
        """
        fields = message.log_fields()

        reason = self._suppression_reason(message)
        if reason is not None:
            if await store.mark_message_suppressed(self.writer, message, reason):
                MESSAGES.labels(message.kind, "suppressed").inc()
                log.info("message suppressed", extra={"action": "suppress_message", "reason": reason, **fields})
            else:
                self._log_lost_lease(message)
            return Outcome("suppressed", reason)

        try:
            composed = compose_message(
                self.config, self.templates, self.sender,
                key=message.key, row_id=message.id, kind=message.kind, user_id=message.user_id,
                template=message.template, campaign=message.campaign, stored_context=message.context,
                created_at=message.created_at, message_id_header=message.message_id_header,
                fallback_user=message.current_user,
            )
        except MissingAddress as exc:
            # Events often arrive just before the identify that carries the
            # address, so a missing address waits like a temporary failure.
            return await self._handle_failure(message, TemporaryFailure(str(exc)), None)
        except MessageNotSendable as exc:
            error = _clip(f"not sent: {exc}")
            await self._record_failure(message, error, None, attempted=False)
            return Outcome("failed", error)

        await self.bucket.acquire()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.send_timeout):
                provider_id = await self.provider.send(composed, message.key)
        except SendFailure as exc:
            failure: SendFailure = exc
        except TimeoutError:
            failure = TemporaryFailure(f"{self.provider.name} send timed out after {self.send_timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - an unforeseen error must not stop delivery
            log.exception("provider raised an unexpected error", extra={"action": "send_error", **fields})
            failure = TemporaryFailure(f"{type(exc).__name__}: {exc}")
        else:
            SEND_SECONDS.labels(self.provider.name).observe(time.perf_counter() - started)
            SEND_ATTEMPTS.labels(self.provider.name, "sent").inc()
            now = self.clock.now()
            if await store.mark_message_sent(self.writer, message, provider_id, composed.message_id, now):
                MESSAGES.labels(message.kind, "sent").inc()
                DELIVERY_LATENCY.labels(message.kind).observe(max(0.0, (now - message.created_at).total_seconds()))
                log.info(
                    "message sent",
                    extra={"action": "send_message", "provider": self.provider.name,
                           "provider_message_id": provider_id, "attempt": message.attempts + 1, **fields},
                )
            else:
                self._log_lost_lease(message)
            return Outcome("sent")

        SEND_SECONDS.labels(self.provider.name).observe(time.perf_counter() - started)
        return await self._handle_failure(message, failure, composed.message_id)

    def _suppression_reason(self, message: ClaimedMessage) -> str | None:
        if message.current_user is None:
            return f"not sent: user {message.user_id!r} no longer exists"
        if message.kind == CAMPAIGN and is_unsubscribed(message.current_user):
            return "not sent: the user is unsubscribed from campaign mail"
        return None

    async def _handle_failure(self, message: ClaimedMessage, failure: SendFailure, message_id: str | None) -> Outcome:
        fields = message.log_fields()
        attempts = message.attempts + 1
        max_attempts = self.config.email.max_attempts
        if not failure.temporary:
            SEND_ATTEMPTS.labels(self.provider.name, "permanent").inc()
            error = _clip(f"permanent failure: {failure}")
            await self._record_failure(message, error, message_id, attempted=True)
            return Outcome("failed", error)

        SEND_ATTEMPTS.labels(self.provider.name, "temporary").inc()
        if attempts >= max_attempts:
            error = _clip(f"gave up after {attempts} attempts; last error: {failure}")
            await self._record_failure(message, error, message_id, attempted=True)
            return Outcome("failed", error)

        delay = self.backoff(attempts)
        next_attempt_at = self.clock.now() + delay
        error = _clip(f"temporary failure: {failure}")
        if await store.mark_message_retry(self.writer, message, error, message_id, next_attempt_at):
            log.warning(
                "send failed, will retry",
                extra={"action": "retry_message", "provider": self.provider.name, "attempt": attempts,
                       "max_attempts": max_attempts, "retry_in_seconds": round(delay.total_seconds(), 3),
                       "error": str(failure), **fields},
            )
        else:
            self._log_lost_lease(message)
        return Outcome("retry", error)

    async def _record_failure(self, message: ClaimedMessage, error: str, message_id: str | None, *, attempted: bool) -> None:
        if await store.mark_message_failed(self.writer, message, error, message_id, attempted=attempted):
            MESSAGES.labels(message.kind, "failed").inc()
            log.error(
                "message failed",
                extra={"action": "fail_message", "attempts": message.attempts + int(attempted), "error": error,
                       **message.log_fields()},
            )
        else:
            self._log_lost_lease(message)

    def _log_lost_lease(self, message: ClaimedMessage) -> None:
        log.warning(
            "outcome not recorded: the message's lease ended and another process claimed it",
            extra={"action": "lost_lease", **message.log_fields()},
        )


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 3] + "..."

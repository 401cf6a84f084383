"""The Amazon SES provider: SESv2 SendEmail with the raw MIME message, through aiobotocore.

Credentials come from the usual AWS sources (environment variables, the
shared credentials file, an instance role). `endpoint_url` points the
client at an SES-compatible server, such as moto in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from segflowd.config import SesConfig
from segflowd.messages.compose import ComposedMessage, InvalidAddress
from segflowd.messages.providers import PermanentFailure, Provider, SendFailure, TemporaryFailure

log = logging.getLogger(__name__)

# Error codes that a later attempt may get past: throttling and the
# service's own trouble. SESv2 names throttling TooManyRequestsException.
_TEMPORARY_CODES = {
    "TooManyRequestsException",
    "Throttling",
    "ThrottlingException",
    "LimitExceededException",
    "SendingPausedException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
}


def classify_ses_error(exc: BaseException) -> SendFailure:
    """Turn a botocore error into a temporary or permanent failure."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        text = f"SES {code}: {error.get('Message', '')}".rstrip(": ")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TEMPORARY_CODES or status == 429 or status >= 500:
            return TemporaryFailure(text)
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                    "ExpiredToken", "ExpiredTokenException", "AccessDeniedException"):
            # The message is fine; the credentials are not.
            return TemporaryFailure(f"{text}; check the AWS credentials segflowd runs with")
        # MessageRejected, MailFromDomainNotVerifiedException,
        # AccountSuspendedException, BadRequestException and the like.
        return PermanentFailure(text)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return TemporaryFailure(f"no AWS credentials for SES: {exc}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                        botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError,
                        botocore.exceptions.ConnectionError)):
        return TemporaryFailure(f"cannot reach SES: {exc}")
    if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError)):
        return TemporaryFailure(f"network error talking to SES: {exc or type(exc).__name__}")
    return TemporaryFailure(f"{type(exc).__name__}: {exc}")


class SesProvider(Provider):
    """Sends through SESv2 with one client shared by every worker."""

    name = "ses"

    def __init__(self, config: SesConfig, timeout_seconds: float = 30.0) -> None:
        self.config = config
        self.timeout_seconds = timeout_seconds
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _get_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                session = get_session()
                client_config = AioConfig(
                    connect_timeout=self.timeout_seconds,
                    read_timeout=self.timeout_seconds,
                    # Delivery has its own retries with backoff and records each one.
                    retries={"max_attempts": 1, "mode": "standard"},
                )
                self._client = await self._stack.enter_async_context(
                    session.create_client(
                        "sesv2",
                        region_name=self.config.region,
                        endpoint_url=self.config.endpoint_url,
                        config=client_config,
                    )
                )
            return self._client

    async def send(self, message: ComposedMessage, key: str) -> str:
        try:
            # SES takes ASCII headers and an IDNA domain; it cannot carry a
            # non-ASCII local part.
            data = message.as_bytes(smtputf8=False)
            sender = message.sender.wire_address(False)
            recipient = message.recipient.wire_address(False)
        except InvalidAddress as exc:
            raise PermanentFailure(f"{exc}; SES does not accept such addresses") from exc
        try:
            client = await self._get_client()
            response = await client.send_email(
                FromEmailAddress=sender,
                Destination={"ToAddresses": [recipient]},
                Content={"Raw": {"Data": data}},
            )
        except Exception as exc:  # noqa: BLE001 - every error is classified
            raise classify_ses_error(exc) from exc
        return str(response.get("MessageId", ""))

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()

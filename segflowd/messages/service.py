"""Transactional messages and the delivery workers.

One claim loop leases due messages in batches (`SELECT ... FOR UPDATE SKIP
LOCKED`, so several processes can share the table) and hands them to
`email.workers` sender tasks. The claim loop runs when `wake()` is called
(after a commit that queued mail), when a sender frees a slot, and every
`scheduler.poll_interval` for retries that came due and for messages that
other processes queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any

from segflowd.config import Config
from segflowd.messages import store
from segflowd.messages.delivery import Delivery
from segflowd.messages.metrics import QUEUED
from segflowd.messages.providers import Provider, make_provider
from segflowd.messages.queue import TRANSACTIONAL, message_context, queue_message, transaction_message_key
from segflowd.messages.ratelimit import TokenBucket
from segflowd.messages.store import ClaimedMessage
from segflowd.model import Event
from segflowd.users import get_user

log = logging.getLogger(__name__)

# How often the queue-depth gauge is refreshed, in seconds.
_GAUGE_INTERVAL_SECONDS = 10.0
# Maximum pause of the claim loop after a database error, in seconds.
_MAX_ERROR_PAUSE_SECONDS = 5.0


class MessageService:
    """Queues transactional messages and runs the delivery workers."""

    def __init__(
        self,
        config: Config,
        db: Any,
        clock: Any,
        *,
        provider: Provider | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self._provider = provider
        self._rng = rng
        self._delivery: Delivery | None = None
        # One bucket for the whole process: every worker draws from it.
        self.bucket = TokenBucket(config.email.max_per_second)
        self.workers = config.email.workers
        self.capacity = 2 * self.workers
        poll = config.scheduler.poll_interval.total_seconds()
        self.poll_seconds = poll
        # The lease covers the wait in the local queue under the rate limit
        # and the longest provider call, with a margin.
        wait_seconds = self.capacity / config.email.max_per_second
        self.lease = max(
            config.scheduler.lease,
            timedelta(seconds=4 * config.email.smtp.timeout_seconds + wait_seconds + 30),
        )
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._queue: asyncio.Queue[ClaimedMessage | None] = asyncio.Queue()
        self._in_hand = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._claim_task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- queueing --------------------------------------------------------------

    async def on_event(self, cur: Any, event: Event, now: datetime) -> list[str]:
        """Queue the transactional messages this event triggers, in the caller's transaction.

        One message per `transactions` entry whose `event` is this event's
        name, keyed by the transaction and the event id, so a replayed
        request queues nothing twice. Returns the message keys.
        """
        transactions = sorted(
            (t for t in self.config.transactions.values() if t.event == event.name), key=lambda t: t.name
        )
        if not transactions:
            return []
        user = await get_user(cur, event.user_id) or {"id": event.user_id}
        keys = []
        for transaction in transactions:
            queued = await queue_message(
                cur,
                key=transaction_message_key(transaction.name, event.id),
                kind=TRANSACTIONAL,
                user_id=event.user_id,
                template=transaction.template,
                context=message_context(user, event=event),
                now=now,
                event_id=event.id,
            )
            keys.append(queued.key)
        return keys

    # --- delivery --------------------------------------------------------------

    @property
    def delivery(self) -> Delivery:
        """The delivery of this process, built on first use with the configured provider."""
        if self._delivery is None:
            provider = self._provider or make_provider(self.config.email)
            self._delivery = Delivery(self.config, self.db, self.clock, provider, bucket=self.bucket, rng=self._rng)
        return self._delivery

    async def _claim(self, limit: int) -> list[ClaimedMessage]:
        now = self.clock.now()
        return await store.claim_messages(self.db, now, now + self.lease, limit)

    async def deliver_due(self, limit: int | None = None) -> int:
        """Claim and deliver every message due now, `email.workers` at a time; return how many.

        Used by tests and one-shot tools; the daemon uses `start()`.
        """
        delivery = self.delivery
        done = 0
        while limit is None or done < limit:
            batch = self.workers if limit is None else min(self.workers, limit - done)
            claimed = await self._claim(batch)
            if not claimed:
                break
            await asyncio.gather(*(delivery.deliver(message) for message in claimed))
            done += len(claimed)
        return done

    def wake(self) -> None:
        """Ask the delivery workers to look for queued messages now."""
        self._wake.set()

    async def start(self) -> None:
        """Start the claim loop and the sender tasks."""
        if self._claim_task is not None:
            return
        delivery = self.delivery
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._send_loop(delivery), name=f"segflowd-sender-{i}") for i in range(self.workers)
        ]
        self._claim_task = asyncio.create_task(self._claim_loop(), name="segflowd-claim-messages")
        log.info(
            "delivery started",
            extra={"action": "start_delivery", "provider": delivery.provider.name, "workers": self.workers,
                   "max_per_second": self.config.email.max_per_second},
        )

    async def stop(self) -> None:
        """Finish the sends in hand, give back claimed messages not yet started, and stop."""
        if self._claim_task is None:
            if self._delivery is not None:
                await self._delivery.provider.close()
            return
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        await self._claim_task
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks)
        self._claim_task = None
        self._tasks = []
        await self.delivery.provider.close()
        log.info("delivery stopped", extra={"action": "stop_delivery"})

    async def _claim_loop(self) -> None:
        failures = 0
        gauge_at = 0.0
        while not self._stopping:
            free = self.capacity - self._in_hand
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            try:
                claimed = await self._claim(free)
                if time.monotonic() >= gauge_at:
                    QUEUED.set(await store.count_queued_messages(self.db))
                    gauge_at = time.monotonic() + _GAUGE_INTERVAL_SECONDS
            except Exception:  # noqa: BLE001 - the loop must outlive a database outage
                failures += 1
                if failures == 1:
                    log.error("claiming messages failed", exc_info=True, extra={"action": "claim_messages"})
                pause = min(_MAX_ERROR_PAUSE_SECONDS, self.poll_seconds * 2 ** min(failures, 10))
                await self._sleep_or_wake(pause)
                continue
            if failures:
                log.info("claiming messages works again", extra={"action": "claim_messages", "failures": failures})
                failures = 0
            for message in claimed:
                self._in_hand += 1
                self._queue.put_nowait(message)
            if len(claimed) < free:
                await self._sleep_or_wake(self.poll_seconds)

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _send_loop(self, delivery: Delivery) -> None:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            try:
                if self._stopping:
                    await store.release_message(delivery.writer, message, self.clock.now())
                else:
                    await delivery.deliver(message)
            except Exception:  # noqa: BLE001 - the message stays leased and is tried again after its lease
                log.exception(
                    "delivering a message failed; it is retried when its lease ends",
                    extra={"action": "deliver_message", **message.log_fields()},
                )
            finally:
                self._in_hand -= 1
                self._slot_freed.set()

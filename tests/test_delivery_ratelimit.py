"""The token bucket that keeps sends under email.max_per_second, on a fake monotonic clock."""

from __future__ import annotations

import asyncio

import pytest

from segflowd.messages.queue import campaign_message_key, message_context, queue_message
from segflowd.messages.ratelimit import TokenBucket
from segflowd.messages.service import MessageService
from test_message_support import add_user, clock, make_config  # noqa: F401 - fixtures


class FakeTime:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_spaces_permits_at_rate():
    time = FakeTime()
    bucket = TokenBucket(4, monotonic=time.monotonic, sleep=time.sleep)
    delays = [bucket.reserve() for _ in range(5)]
    assert delays == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_burst_then_rate():
    time = FakeTime()
    bucket = TokenBucket(2, burst=3, monotonic=time.monotonic, sleep=time.sleep)
    delays = [bucket.reserve() for _ in range(5)]
    assert delays == pytest.approx([0, 0, 0, 0.5, 1.0])


def test_idle_time_refills_up_to_burst_only():
    time = FakeTime()
    bucket = TokenBucket(10, burst=2, monotonic=time.monotonic, sleep=time.sleep)
    assert bucket.reserve() == 0
    time.now += 60  # a long idle period grants no more than the burst
    delays = [bucket.reserve() for _ in range(4)]
    assert delays == pytest.approx([0, 0, 0.1, 0.2])


def test_rate_holds_over_a_long_run():
    time = FakeTime()
    bucket = TokenBucket(20, monotonic=time.monotonic, sleep=time.sleep)
    for _ in range(200):
        delay = bucket.reserve()
        time.now += delay  # each caller sends right after its wait
    # 200 sends at 20 per second take 199 intervals of 50 ms.
    assert time.now - 1000.0 == pytest.approx(9.95)


async def test_acquire_sleeps_only_when_needed():
    time = FakeTime()
    bucket = TokenBucket(5, monotonic=time.monotonic, sleep=time.sleep)
    await asyncio.gather(*(bucket.acquire() for _ in range(3)))
    assert time.sleeps == pytest.approx([0.2, 0.4])


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(5, burst=0.5)


async def test_delivery_takes_a_permit_per_send(db, clock, make_config):
    config = make_config(email={"max_per_second": 2, "workers": 4})
    service = MessageService(config, db, clock)
    time = FakeTime()
    service.bucket = TokenBucket(2, monotonic=time.monotonic, sleep=time.sleep)
    for i in range(5):
        await add_user(db, f"u{i}", clock, email=f"u{i}@example.test", name="U")
        async with db.transaction() as cur:
            await queue_message(
                cur, key=campaign_message_key(i, 0), kind="campaign", user_id=f"u{i}", template="welcome",
                context=message_context({"id": f"u{i}", "email": f"u{i}@example.test", "name": "U"}),
                now=clock.now(), campaign="c", run_id=i,
            )

    assert await service.deliver_due() == 5

    assert sorted(time.sleeps) == pytest.approx([0.5, 1.0, 1.5, 2.0])

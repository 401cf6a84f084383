"""The example shop end to end on real data: the first 1,000 CDNOW customers.

The slice goes in through the public HTTP API, as bench/load_cdnow.py sends
it, with the daemon's clock at 1998-07-01 (the day after the data ends).
Every segment is checked against a reference computed here in plain Python
from the file, every receipt against its purchase at a real SMTP server,
and the campaigns against what the flows in flows/shop.py promise.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from segflowd.clock import FakeClock
from segflowd.config import load_config
from segflowd.http.app import build_app
from segflowd.services import Services
from test_message_support import smtp_sink  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import load_cdnow  # noqa: E402

CUSTOMERS = 1000
DATA_END = datetime(1998, 7, 1)
API_KEY = "e2e-key"


# --- reference membership, straight from the file ---------------------------


def reference_segments(purchases: list[load_cdnow.Purchase], now: datetime) -> dict[str, set[str]]:
    count: dict[str, int] = defaultdict(int)
    total: dict[str, float] = defaultdict(float)
    last: dict[str, date] = {}
    for purchase in purchases:
        count[purchase.customer_id] += 1
        total[purchase.customer_id] += purchase.amount
        last[purchase.customer_id] = max(last.get(purchase.customer_id, purchase.day), purchase.day)
    # Purchases are stored at noon UTC of their day.
    cutoff = now - timedelta(days=90)
    return {
        "all-customers": set(count),
        "repeat-buyers": {c for c, n in count.items() if n >= 2},
        "one-time-buyers": {c for c, n in count.items() if n == 1},
        "big-spenders": {c for c, t in total.items() if t > 500},
        "lapsed": {c for c, d in last.items() if datetime(d.year, d.month, d.day, 12) < cutoff},
        "unsubscribed": set(),
    }


async def members(db, segment: str) -> set[str]:
    rows = await db.fetch_all("SELECT user_id FROM segment_members WHERE segment = %s", (segment,))
    return {row["user_id"] for row in rows}


async def runs_by_status(db, campaign: str) -> dict[str, set[str]]:
    rows = await db.fetch_all("SELECT user_id, status FROM campaign_runs WHERE campaign = %s", (campaign,))
    result: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        result[row["status"]].add(row["user_id"])
    return result


async def settle(services: Services) -> None:
    """Run every due step and deliver every due message until nothing is left."""
    while True:
        steps = await services.campaigns.run_due_steps()
        sent = await services.messages.deliver_due()
        if not steps and not sent:
            return


# --- the shop, configured as in segflow.yaml ------------------------------------


@pytest.fixture
def shop_config(tmp_path, database_url, smtp_sink):  # noqa: F811 - fixture
    raw = yaml.safe_load((REPO / "segflow.yaml").read_text(encoding="utf-8"))
    raw["database"] = {"url": database_url.raw}
    raw["http"] = {"listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:8080", "api_keys": [API_KEY],
                   "secret": "e2e-secret-value"}
    raw["email"] = {
        "from": raw["email"]["from"],
        "provider": "smtp",
        "smtp": {"host": "127.0.0.1", "port": smtp_sink.port, "tls": "none", "timeout_seconds": 10},
        "max_per_second": 100000,
    }
    # The config's relative paths and `flows.shop` resolve from its folder.
    (tmp_path / "flows").symlink_to(REPO / "flows")
    path = tmp_path / "segflow.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


async def test_cdnow_slice_end_to_end(aiohttp_client, db, shop_config, smtp_sink):  # noqa: F811 - fixture
    clock = FakeClock(DATA_END)
    services = Services.build(shop_config, db, clock)
    await services.segments.sync_definitions()
    client = await aiohttp_client(build_app(services, run_background=False))
    url = str(client.make_url("")).rstrip("/")
    purchases = load_cdnow.read_purchases(REPO / "data/cdnow/CDNOW_master.txt", customers=CUSTOMERS)
    assert len({p.customer_id for p in purchases}) == CUSTOMERS

    # Load through the public API, then load again: nothing is stored twice.
    summary = await load_cdnow.load(url, API_KEY, purchases, batch_size=400, concurrency=4, progress=False)
    assert (summary.accepted, summary.rejected, summary.failed_requests) == (len(purchases) + CUSTOMERS, 0, 0)
    again = await load_cdnow.load(url, API_KEY, purchases, batch_size=400, concurrency=4, progress=False)
    assert (again.accepted, again.duplicate) == (0, len(purchases) + CUSTOMERS)
    events = await db.fetch_one("SELECT COUNT(*) AS n FROM events WHERE name = 'purchase'")
    assert events["n"] == len(purchases)

    # Every segment equals the reference computed from the file.
    expected = reference_segments(purchases, clock.now())
    for name, reference in expected.items():
        assert await members(db, name) == reference, name

    # Welcome and VIP runs started for everyone who qualifies; win-back for the lapsed.
    await settle(services)
    welcome = await runs_by_status(db, "welcome")
    assert welcome["active"] == expected["all-customers"]
    assert set(await runs_by_status(db, "vip")) == {"active"}
    assert (await runs_by_status(db, "vip"))["active"] == expected["big-spenders"]
    assert (await runs_by_status(db, "winback"))["active"] == expected["lapsed"]
    # The win-back waits a day first, so customers who only looked lapsed
    # while their history was loading got no win-back mail.
    assert not [m for m in smtp_sink.handler.received if m.message["Subject"].startswith("We miss you")]

    # Exactly one receipt per purchase, with the right amount and CD count.
    received = smtp_sink.handler.received
    receipts = [m for m in received if m.message["Subject"].startswith("Your CD Corner receipt")]
    assert len(receipts) == len(purchases)
    by_address: dict[str, list[str]] = defaultdict(list)
    for receipt in receipts:
        by_address[receipt.rcpt_tos[0]].append(receipt.message["Subject"])
    for purchase in purchases[:200]:
        plural = "s" if purchase.cds != 1 else ""
        subject = f"Your CD Corner receipt: {purchase.cds} CD{plural}, ${purchase.amount:.2f}"
        assert subject in by_address[f"customer{purchase.customer_id}@example.test"]

    # Two days on, the welcome series finishes: genre picks only for customers with a genre.
    clock.advance(days=3)
    await settle(services)
    welcome = await runs_by_status(db, "welcome")
    assert welcome["completed"] == expected["all-customers"]
    assert "active" not in welcome
    picks = [m for m in smtp_sink.handler.received if "picks for you" in m.message["Subject"]]
    with_genre = {c for c in expected["all-customers"] if load_cdnow.customer_traits(c).get("favorite_genre")}
    assert {m.rcpt_tos[0] for m in picks} == {f"customer{c}@example.test" for c in with_genre}
    assert len(picks) == len(with_genre)

    # The welcome flow's update_user re-evaluated every customer three days
    # later, so the time-dependent segment moved with the clock for them.
    lapsed_then = reference_segments(purchases, clock.now())["lapsed"]
    assert await members(db, "lapsed") == lapsed_then

    # Past the lapse window more customers lapse; a full refresh enrolls them.
    clock.set(datetime(1998, 10, 1))
    await services.segments.refresh_segment("lapsed")
    later = reference_segments(purchases, clock.now())["lapsed"]
    assert later > lapsed_then
    assert await members(db, "lapsed") == later
    await settle(services)
    winback = await runs_by_status(db, "winback")
    newly_lapsed = later - lapsed_then
    assert newly_lapsed <= winback["active"]

    # A purchase ends that customer's win-back run at once, before its timeout.
    buyer = sorted(newly_lapsed)[0]
    response = await client.post(
        f"/api/user/{buyer}/event/purchase",
        json={"attributes": {"amount": 15.0, "cds": 1}, "timestamp": "1998-10-01T09:00:00Z"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status == 201
    assert "lapsed" in (await response.json())["segments"]["left"]
    await settle(services)
    winback = await runs_by_status(db, "winback")
    assert buyer in winback["exited"]
    assert buyer not in winback["active"]

    # After the grace day the others get the win-back mail; the buyer does not.
    before = len(smtp_sink.handler.received)
    clock.advance(days=2)
    await settle(services)
    first = [m for m in smtp_sink.handler.received[before:] if m.message["Subject"].startswith("We miss you")]
    recipients = {m.rcpt_tos[0] for m in first}
    assert f"customer{buyer}@example.test" not in recipients
    assert recipients == {f"customer{c}@example.test" for c in newly_lapsed - {buyer}}
    assert len(first) == len(recipients)

    # With no purchase in the 14 days after it, the last-chance mail follows.
    before = len(smtp_sink.handler.received)
    clock.advance(days=15)
    await settle(services)
    last_chance = [m for m in smtp_sink.handler.received[before:] if m.message["Subject"].startswith("Last chance")]
    # Runs that started earlier, in the same wait, are due too.
    waiting = {f"customer{c}@example.test" for c in winback["active"]}
    assert recipients <= waiting
    assert {m.rcpt_tos[0] for m in last_chance} == waiting
    assert len(last_chance) == len(waiting)

    # Nothing was sent twice.
    keys = await db.fetch_one("SELECT COUNT(*) AS n, COUNT(DISTINCT message_key) AS distinct_keys FROM messages")
    assert keys["n"] == keys["distinct_keys"]
    sent = await db.fetch_one("SELECT COUNT(*) AS n FROM messages WHERE status = 'sent'")
    assert sent["n"] == len(smtp_sink.handler.received)

"""Load the CDNOW purchase history into a running segflowd through its public HTTP API.

Reads data/cdnow/CDNOW_master.txt and sends, in date order, an identify call
for each customer before their first purchase (with a made-up name, an
@example.test address and sometimes a favourite genre) and a `purchase`
track call per row, with the row's date as its timestamp and the amount and
CD count as properties. Calls go through POST /api/batch; every call carries
a messageId derived from the file's row, so running the loader again stores
nothing twice.

    .venv/bin/python bench/load_cdnow.py --url http://127.0.0.1:8080 --api-key dev-key
    .venv/bin/python bench/load_cdnow.py --customers 1000   # the first 1,000 customer ids only
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import aiohttp

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "data" / "cdnow" / "CDNOW_master.txt"

FIRST_NAMES = [
    "Ann", "Bob", "Chloé", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiroshi", "Ingrid", "José",
    "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamar",
    "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoë",
]
LAST_NAMES = [
    "Adams", "Becker", "Castillo", "Dubois", "Eriksen", "Fischer", "García", "Horvat", "Ito", "Jensen",
    "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quinn", "Rossi", "Silva", "Tanaka",
]
# One customer in three has no favourite genre, so the welcome flow's
# branch is taken both ways.
GENRES = ["rock", "jazz", "classical", None, "pop", "soul", None, "country", "blues", None, "hip hop", None]


@dataclass(frozen=True)
class Purchase:
    line: int
    customer_id: str
    day: date
    cds: int
    amount: float


def read_purchases(path: Path = DEFAULT_FILE, customers: int | None = None) -> list[Purchase]:
    """Parse the file; with `customers`, keep the ids 1 to `customers` only. Raise ValueError on a bad row."""
    purchases = []
    with path.open(encoding="ascii") as file:
        for number, line in enumerate(file, start=1):
            parts = line.split()
            if not parts or parts[0] == "customer_id":
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{number}: expected 4 columns, got {len(parts)}: {line.strip()!r}")
            customer_id, day, cds, amount = parts
            if customers is not None and int(customer_id) > customers:
                continue
            purchases.append(
                Purchase(number, customer_id, date(int(day[:4]), int(day[4:6]), int(day[6:8])), int(cds), float(amount))
            )
    # The file is sorted by customer; a shop's backend sends in time order.
    purchases.sort(key=lambda p: (p.day, p.line))
    return purchases


def customer_traits(customer_id: str) -> dict[str, Any]:
    """Made-up, deterministic name, address and favourite genre for a customer id."""
    number = int(customer_id)
    first = FIRST_NAMES[number % len(FIRST_NAMES)]
    last = LAST_NAMES[(number // len(FIRST_NAMES)) % len(LAST_NAMES)]
    traits: dict[str, Any] = {
        "name": first,
        "last_name": last,
        "email": f"customer{customer_id}@example.test",
    }
    genre = GENRES[number % len(GENRES)]
    if genre is not None:
        traits["favorite_genre"] = genre
    return traits


def calls(purchases: list[Purchase]) -> Iterator[dict[str, Any]]:
    """Identify each customer at their first purchase, then track every purchase."""
    seen: set[str] = set()
    for purchase in purchases:
        timestamp = f"{purchase.day.isoformat()}T12:00:00Z"
        if purchase.customer_id not in seen:
            seen.add(purchase.customer_id)
            yield {
                "type": "identify",
                "userId": purchase.customer_id,
                "traits": customer_traits(purchase.customer_id),
                "messageId": f"cdnow-identify-{purchase.customer_id}",
            }
        yield {
            "type": "track",
            "userId": purchase.customer_id,
            "event": "purchase",
            "properties": {"amount": purchase.amount, "cds": purchase.cds},
            "timestamp": timestamp,
            "messageId": f"cdnow-row-{purchase.line}",
        }


def split_batches(all_calls: list[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Cut the calls into batches, never parting an identify from the purchase after it.

    Batches run concurrently, so an identify at the end of one batch could
    be stored after its purchase in the next, and the receipt would go to a
    user with no address yet.
    """
    batches: list[list[dict[str, Any]]] = [[]]
    for call in all_calls:
        current = batches[-1]
        if len(current) >= batch_size and current[-1]["type"] != "identify":
            batches.append([])
        batches[-1].append(call)
    return [batch for batch in batches if batch]


@dataclass
class Summary:
    sent: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    failed_requests: int = 0
    errors: list[str] = field(default_factory=list)


async def load(
    url: str,
    api_key: str,
    purchases: list[Purchase],
    *,
    batch_size: int = 500,
    concurrency: int = 4,
    progress: bool = True,
) -> Summary:
    """Send every call in batches; return counts by result."""
    all_calls = list(calls(purchases))
    batches = split_batches(all_calls, batch_size)
    summary = Summary()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(all_calls), unit="call", file=sys.stderr)
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    headers = {"Authorization": f"Bearer {api_key}"}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                for attempt in range(1, 6):
                    try:
                        async with session.post(f"{url}/api/batch", json={"batch": batch}, headers=headers) as response:
                            body = await response.json()
                            status = response.status
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        # Safe to resend: every call has a messageId.
                        if attempt == 5:
                            raise
                        await asyncio.sleep(attempt)
                        summary.errors.append(f"retried a batch after {exc!r}")
                        continue
                    break
                summary.sent += len(batch)
                if status not in (200, 422):
                    summary.failed_requests += 1
                    summary.errors.append(f"HTTP {status}: {body.get('error')}")
                for result in body.get("results", []):
                    setattr(summary, result["status"], getattr(summary, result["status"]) + 1)
                    if result["status"] == "rejected" and len(summary.errors) < 20:
                        summary.errors.append(result["error"])
                if bar is not None:
                    bar.update(len(batch))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if bar is not None:
        bar.close()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description="Load the CDNOW purchase history into segflowd over HTTP.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="segflowd's base URL")
    parser.add_argument("--api-key", default="dev-key", help="an API key from http.api_keys")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="path to CDNOW_master.txt")
    parser.add_argument("--customers", type=int, help="load only customer ids 1 to N")
    parser.add_argument("--batch-size", type=int, default=500, help="calls per POST /api/batch (at most 999: an identify may add one)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    args = parser.parse_args()

    purchases = read_purchases(args.file, args.customers)
    started = time.monotonic()
    summary = asyncio.run(load(args.url, args.api_key, purchases, batch_size=args.batch_size,
                               concurrency=args.concurrency))
    elapsed = time.monotonic() - started
    customers = len({p.customer_id for p in purchases})
    print(
        f"sent {summary.sent:,} calls ({customers:,} customers, {len(purchases):,} purchases) in {elapsed:.1f} s: "
        f"{summary.accepted:,} accepted, {summary.duplicate:,} duplicates, {summary.rejected:,} rejected; "
        f"{summary.sent / elapsed:,.0f} calls/s, {len(purchases) / elapsed:,.0f} purchase events/s"
    )
    for error in summary.errors[:20]:
        print(f"  {error}", file=sys.stderr)
    return 1 if summary.rejected or summary.failed_requests else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Turn identify and track calls into committed rows.

One transaction per request (or per batch) stores the user or event,
re-evaluates the user's segments, lets campaigns enroll or wake, and queues
transactional mail, so that all of it commits together or not at all.
Requests for one user are serialised on the user's row lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, TypeVar

from prometheus_client import Counter

from segflowd.db import ER_DUP_ENTRY, ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, dump_json, error_code, load_json
from segflowd.model import Event, IdentifyItem, MembershipChanges, RejectedItem
from segflowd.metrics import REGISTRY
from segflowd.queries import QUERIES
from segflowd.services import Services
from segflowd.timestamps import format_timestamp
from segflowd.users import ensure_user, lock_users, update_user, upsert_user

log = logging.getLogger(__name__)

EVENTS_INGESTED = Counter("segflowd_events_ingested", "Events stored.", registry=REGISTRY)
USERS_UPSERTED = Counter("segflowd_users_upserted", "Identify calls applied to users.", registry=REGISTRY)
DUPLICATES = Counter(
    "segflowd_idempotent_replays", "Requests answered from a stored idempotency key.", registry=REGISTRY
)

T = TypeVar("T")
_RETRYABLE = {ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT}
_ATTEMPTS = 5


class IdempotencyConflict(Exception):
    """The idempotency key was used before for a different request."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for a different request; "
            "send a new key for a new event"
        )


class UserNotFound(Exception):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} does not exist; create it with POST /api/user/{{id}}")


@dataclass
class Outcome:
    """The result of one call, which the HTTP layer turns into the response body."""

    body: dict[str, Any]
    created: bool = False
    replayed: bool = False


@dataclass
class _Wakeups:
    """Flags for the background loops that have new work once the transaction commits.

    Waking a loop costs it a claim query, so a request that queued no mail
    and touched no run leaves both asleep.
    """

    campaigns: bool = False
    messages: bool = False


@dataclass
class _Pending:
    """Users touched in a transaction and the event names that touched them."""

    event_names: dict[str, set[str | None]] = field(default_factory=dict)

    def touch(self, user_id: str, event_name: str | None) -> None:
        self.event_names.setdefault(user_id, set()).add(event_name)


def request_hash(*parts: Any) -> str:
    """Hash a request's content, to tell a retry from a reuse of its idempotency key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def changes_body(changes: MembershipChanges) -> dict[str, list[str]]:
    return {"entered": changes.entered, "left": changes.left}


class Ingest:
    """The ingest operations behind the HTTP API."""

    def __init__(self, services: Services) -> None:
        self.services = services

    # --- transactions ------------------------------------------------------

    async def _in_transaction(self, work: Callable[[Any], Awaitable[T]], wakeups: _Wakeups | None = None) -> T:
        """Run `work(cur)` in one transaction, retrying deadlocks and lock timeouts.

        After the commit, wake the scheduler and delivery where `wakeups`
        flags new work (both when it is None).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self.services.db.transaction() as cur:
                    result = await work(cur)
                break
            except Exception as exc:
                if error_code(exc) not in _RETRYABLE or attempt == _ATTEMPTS:
                    raise
                log.warning(
                    "transaction retried after a lock conflict",
                    extra={"action": "retry_transaction", "attempt": attempt, "error": str(exc)},
                )
        if wakeups is None or wakeups.campaigns:
            self.services.campaigns.wake()
        if wakeups is None or wakeups.messages:
            self.services.messages.wake()
        return result

    async def _evaluate(self, cur: Any, user_id: str, event_names: set[str | None]) -> MembershipChanges:
        """Re-evaluate a user's segments: all of them after an identify, else those the events trigger."""
        segments = self.services.segments
        if None in event_names:
            return await segments.evaluate_user(cur, user_id)
        merged = MembershipChanges()
        for name in sorted(n for n in event_names if n is not None):
            changes = await segments.evaluate_user(cur, user_id, event_name=name)
            merged.entered += [s for s in changes.entered if s not in merged.entered]
            merged.left += [s for s in changes.left if s not in merged.left]
        # A segment entered and left within one batch nets out to no change.
        both = set(merged.entered) & set(merged.left)
        merged.entered = sorted(s for s in merged.entered if s not in both)
        merged.left = sorted(s for s in merged.left if s not in both)
        return merged

    # --- single calls --------------------------------------------------------

    async def identify(self, user_id: str, attributes: dict[str, Any], *, must_exist: bool = False) -> Outcome:
        """Create or merge a user (POST), or merge into an existing one only (PATCH)."""

        wakeups = _Wakeups()

        async def work(cur: Any) -> Outcome:
            now = self.services.clock.now()
            if must_exist:
                if not await update_user(cur, user_id, attributes, now):
                    raise UserNotFound(user_id)
                created = False
            else:
                created = await upsert_user(cur, user_id, attributes, now)
            changes = await self.services.segments.evaluate_user(cur, user_id)
            wakeups.campaigns |= bool(changes)
            return Outcome({"id": user_id, "created": created, "segments": changes_body(changes)}, created=created)

        outcome = await self._in_transaction(work, wakeups)
        USERS_UPSERTED.inc()
        log.info(
            "user stored",
            extra={"action": "identify", "user_id": user_id, "user_created": outcome.created,
                   "entered": outcome.body["segments"]["entered"], "left": outcome.body["segments"]["left"]},
        )
        return outcome

    async def track(
        self,
        user_id: str,
        name: str,
        attributes: dict[str, Any],
        timestamp: datetime | None,
        *,
        idempotency_key: str | None = None,
        raw_timestamp: str | None = None,
    ) -> Outcome:
        """Store one event (creating an unknown user), or replay the stored response for its key."""
        fingerprint = request_hash("track", user_id, name, attributes, raw_timestamp)
        wakeups = _Wakeups()

        async def work(cur: Any) -> Outcome:
            if idempotency_key is not None:
                stored = await self._stored_response(cur, idempotency_key, fingerprint)
                if stored is not None:
                    return stored
            now = self.services.clock.now()
            body = await self._store_event(cur, user_id, name, attributes, timestamp or now, now, wakeups=wakeups)
            # A user this event created may enter segments that read only
            # `users`, so a new user gets every segment evaluated.
            trigger = None if body["user_created"] else name
            changes = await self.services.segments.evaluate_user(cur, user_id, event_name=trigger)
            wakeups.campaigns |= bool(changes)
            body["segments"] = changes_body(changes)
            if idempotency_key is not None:
                await cur.execute(
                    QUERIES.insert_idempotent_response,
                    (idempotency_key, fingerprint, body["event_id"], dump_json(body), now),
                )
            return Outcome(body, created=True)

        try:
            outcome = await self._in_transaction(work, wakeups)
        except Exception as exc:
            if idempotency_key is None or error_code(exc) != ER_DUP_ENTRY:
                raise
            # A concurrent request with the same key committed first.
            outcome = await self._in_transaction(
                lambda cur: self._require_stored(cur, idempotency_key, fingerprint), _Wakeups()
            )
        if outcome.replayed:
            DUPLICATES.inc()
            log.info("event replayed from its idempotency key",
                     extra={"action": "track_replay", "user_id": user_id, "event": name, "event_id": outcome.body.get("event_id")})
        else:
            EVENTS_INGESTED.inc()
            log.info(
                "event stored",
                extra={"action": "track", "user_id": user_id, "event": name, "event_id": outcome.body["event_id"]},
            )
        return outcome

    async def _stored_response(self, cur: Any, key: str, fingerprint: str) -> Outcome | None:
        await cur.execute(QUERIES.get_idempotent_response, (key,))
        row = await cur.fetchone()
        if row is None:
            return None
        if row["request_hash"] != fingerprint:
            raise IdempotencyConflict(key)
        return Outcome(load_json(row["response"]), created=True, replayed=True)

    async def _require_stored(self, cur: Any, key: str, fingerprint: str) -> Outcome:
        stored = await self._stored_response(cur, key, fingerprint)
        if stored is None:
            raise RuntimeError(f"idempotency key {key!r} conflicted but has no stored response")
        return stored

    async def _store_event(
        self,
        cur: Any,
        user_id: str,
        name: str,
        attributes: dict[str, Any],
        happened_at: datetime,
        now: datetime,
        *,
        wakeups: _Wakeups,
        user_locked: bool = False,
    ) -> dict[str, Any]:
        """Insert the event, creating its user if unknown, then wake waits and queue transactional mail.

        With `user_locked`, the caller has already locked (or created) the user's row.
        `wakeups` records whether a run was woken or mail was queued.
        """
        user_created = False if user_locked else await ensure_user(cur, user_id, now)
        await cur.execute(QUERIES.insert_event, (user_id, name, dump_json(attributes), happened_at, now))
        event = Event(cur.lastrowid, user_id, name, attributes, happened_at)
        wakeups.campaigns |= bool(await self.services.campaigns.on_event(cur, event, now))
        message_keys = await self.services.messages.on_event(cur, event, now)
        wakeups.messages |= bool(message_keys)
        return {
            "event_id": event.id,
            "user_id": user_id,
            "name": name,
            "timestamp": format_timestamp(happened_at),
            "user_created": user_created,
            "messages": message_keys,
        }

    # --- batches -----------------------------------------------------------

    async def batch(self, items: list[Any]) -> list[dict[str, Any]]:
        """Apply valid identify and track items in order in one transaction.

        `items` contains IdentifyItem, TrackItem, or RejectedItem for an item
        that failed validation. Each gets a result in the same place.
        Segments are evaluated once per touched user, after all items.
        """
        keys = [item.idempotency_key for item in items if not isinstance(item, RejectedItem) and item.idempotency_key]
        hashes = {id(item): _item_hash(item) for item in items if not isinstance(item, RejectedItem)}

        user_ids = [item.user_id for item in items if not isinstance(item, RejectedItem)]
        wakeups = _Wakeups()

        async def work(cur: Any) -> list[dict[str, Any]]:
            now = self.services.clock.now()
            created_users = await lock_users(cur, user_ids, now)
            stored = await self._stored_many(cur, keys)
            pending = _Pending()
            results: list[dict[str, Any]] = []
            new_keys: list[tuple[Any, ...]] = []
            seen_in_batch: dict[str, tuple[str, dict[str, Any]]] = {}
            for index, item in enumerate(items):
                if isinstance(item, RejectedItem):
                    results.append({"index": index, "status": "rejected", **item.error})
                    continue
                key = item.idempotency_key
                if key is not None and (key in stored or key in seen_in_batch):
                    previous_hash, previous = stored.get(key) or seen_in_batch[key]
                    if previous_hash != hashes[id(item)]:
                        conflict = IdempotencyConflict(key)
                        results.append({"index": index, "status": "rejected", "error": str(conflict), "field": f"batch[{index}].messageId"})
                    else:
                        results.append({"index": index, "status": "duplicate", **previous})
                    continue
                # The first accepted item for a user that lock_users created
                # reports the creation.
                created = item.user_id in created_users
                created_users.discard(item.user_id)
                if isinstance(item, IdentifyItem):
                    if item.attributes:
                        await upsert_user(cur, item.user_id, item.attributes, now)
                    pending.touch(item.user_id, None)
                    body: dict[str, Any] = {"type": "identify", "user_id": item.user_id, "created": created}
                else:
                    body = await self._store_event(
                        cur, item.user_id, item.name, item.attributes, item.timestamp or now, now,
                        wakeups=wakeups, user_locked=True,
                    )
                    body["user_created"] = created
                    body["type"] = "track"
                    pending.touch(item.user_id, None if created else item.name)
                if key is not None:
                    seen_in_batch[key] = (hashes[id(item)], body)
                    new_keys.append((key, hashes[id(item)], body.get("event_id"), dump_json(body), now))
                results.append({"index": index, "status": "accepted", **body})

            changes_by_user = {}
            for user_id, names in pending.event_names.items():
                changes_by_user[user_id] = await self._evaluate(cur, user_id, names)
                wakeups.campaigns |= bool(changes_by_user[user_id])
            for result in results:
                if result["status"] == "accepted":
                    result["segments"] = changes_body(changes_by_user[result["user_id"]])
            if new_keys:
                await cur.executemany(QUERIES.insert_idempotent_response, new_keys)
            return results

        for attempt in (1, 2):
            try:
                results = await self._in_transaction(work, wakeups)
                break
            except Exception as exc:
                # A concurrent batch stored one of these keys first. Run again,
                # and this time those items get their stored results as duplicates.
                if error_code(exc) != ER_DUP_ENTRY or attempt == 2:
                    raise
        accepted = [r for r in results if r["status"] == "accepted"]
        EVENTS_INGESTED.inc(sum(1 for r in accepted if r["type"] == "track"))
        USERS_UPSERTED.inc(sum(1 for r in accepted if r["type"] == "identify"))
        log.info(
            "batch stored",
            extra={"action": "batch", "items": len(items), "accepted": len(accepted),
                   "duplicates": sum(1 for r in results if r["status"] == "duplicate"),
                   "rejected": sum(1 for r in results if r["status"] == "rejected")},
        )
        return results

    async def _stored_many(self, cur: Any, keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        if not keys:
            return {}
        placeholders = ", ".join(["%s"] * len(keys))
        # The IN list is built from placeholders only; values are parameters.
        await cur.execute(
            f"SELECT idempotency_key, request_hash, response FROM idempotency_keys WHERE idempotency_key IN ({placeholders})",
            keys,
        )
        return {row["idempotency_key"]: (row["request_hash"], load_json(row["response"])) for row in await cur.fetchall()}

    # --- reads and deletes ---------------------------------------------------------

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        async with self.services.db.transaction() as cur:
            await cur.execute(QUERIES.get_user, (user_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            return {
                "id": row["id"],
                "attributes": load_json(row["attributes"]),
                "created_at": format_timestamp(row["created_at"]),
                "updated_at": format_timestamp(row["updated_at"]),
                "segments": await self.services.segments.segments_of(cur, user_id),
                "campaigns": await self.services.campaigns.runs_of(cur, user_id),
            }

    async def delete_user(self, user_id: str) -> bool:
        """Delete the user, their events and memberships, and stop their runs; False if unknown."""

        async def work(cur: Any) -> bool:
            await cur.execute(QUERIES.lock_user, (user_id,))
            if await cur.fetchone() is None:
                return False
            await self.services.campaigns.stop_user_runs(cur, user_id, self.services.clock.now())
            await cur.execute(QUERIES.delete_user_events, (user_id,))
            await cur.execute(QUERIES.delete_user_memberships, (user_id,))
            await cur.execute(QUERIES.delete_user, (user_id,))
            return True

        deleted = await self._in_transaction(work, _Wakeups())
        if deleted:
            log.info("user deleted", extra={"action": "delete_user", "user_id": user_id})
        return deleted


def _item_hash(item: Any) -> str:
    if isinstance(item, IdentifyItem):
        return request_hash("identify", item.user_id, item.attributes)
    return request_hash("track", item.user_id, item.name, item.attributes, item.raw_timestamp)


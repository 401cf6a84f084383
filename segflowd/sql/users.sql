-- Statements on users and events, used by ingest and by flows' update_user.

-- upsert_user --
-- Create a user, or merge attributes into an existing one as a JSON merge
-- patch (RFC 7396): keys are added or replaced, a null value removes its
-- key, nested objects merge. The patch is passed twice: for a new row and for
-- an existing one. Affected rows: 1 created, 2 changed, 0 unchanged.
INSERT INTO users (id, attributes, created_at, updated_at)
VALUES (%s, JSON_MERGE_PATCH('{}', %s), %s, %s)
ON DUPLICATE KEY UPDATE
    attributes = JSON_MERGE_PATCH(attributes, %s),
    updated_at = VALUES(updated_at)

-- update_user --
-- Merge attributes into an existing user only; no row means no such user.
UPDATE users
SET attributes = JSON_MERGE_PATCH(attributes, %s), updated_at = %s
WHERE id = %s

-- ensure_user --
-- Create a user with no attributes if missing (an event for an unknown
-- user). The no-op update takes the row lock on an existing user, which
-- serialises concurrent requests for one user. Affected rows: 1 created.
INSERT INTO users (id, attributes, created_at, updated_at)
VALUES (%s, '{}', %s, %s)
ON DUPLICATE KEY UPDATE id = id

-- get_user --
-- One user's row.
SELECT id, attributes, created_at, updated_at FROM users WHERE id = %s

-- lock_user --
-- Lock a user's row for the rest of the transaction, so that two requests
-- for one user evaluate its segments one after the other.
SELECT id FROM users WHERE id = %s FOR UPDATE

-- delete_user --
-- Remove the user row.
DELETE FROM users WHERE id = %s

-- delete_user_events --
-- Remove every event of a user.
DELETE FROM events WHERE user_id = %s

-- delete_user_memberships --
-- Remove a user from every segment.
DELETE FROM segment_members WHERE user_id = %s

-- insert_event --
-- Store one event.
INSERT INTO events (user_id, name, attributes, created_at, received_at)
VALUES (%s, %s, %s, %s, %s)

-- get_idempotent_response --
-- The stored response for an idempotency key, if the request was seen before.
SELECT request_hash, response, event_id FROM idempotency_keys WHERE idempotency_key = %s

-- insert_idempotent_response --
-- Store the response for an idempotency key. The key is the primary key,
-- so of two concurrent requests with one key only one commits.
INSERT INTO idempotency_keys (idempotency_key, request_hash, event_id, response, created_at)
VALUES (%s, %s, %s, %s, %s)

-- Statements on the messages table: queueing, claiming and recording delivery.
--
-- A claimed message carries a lease: `lease_until` is set to the end of the
-- lease and `next_attempt_at` moves with it, so a message held by a process
-- that died becomes due again when its lease ends. The exact `lease_until`
-- value is the claim's token: every update of a claimed message checks it,
-- so a process whose lease ran out cannot overwrite the outcome recorded by
-- the process that claimed the message after it.

-- insert_message --
-- Queue one logical message under its unique key. A second insert with the
-- same key (a retried request, a replayed step) is ignored, so a message is
-- committed once.
INSERT IGNORE INTO messages
    (message_key, kind, user_id, template, campaign, run_id, event_id, context,
     status, last_error, created_at, next_attempt_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

-- claim_messages --
-- Lock due queued messages that no other process holds, oldest due first.
-- The caller sets their lease in the same transaction with lease_messages.
SELECT id, message_key, kind, user_id, template, campaign, run_id, event_id,
       context, attempts, message_id_header, created_at
FROM messages
WHERE status = 'queued' AND next_attempt_at <= %s
ORDER BY next_attempt_at
LIMIT %s
FOR UPDATE SKIP LOCKED

-- lease_messages --
-- Take a lease on claimed messages until the given time (the claim token).
UPDATE messages
SET lease_until = %s, next_attempt_at = %s
WHERE id IN %s

-- get_recipients_state --
-- The current attributes of the users of claimed messages, read without a
-- lock: a user deleted or unsubscribed since queueing gets no campaign mail.
SELECT id, attributes FROM users WHERE id IN %s

-- mark_message_sent --
-- Record that the provider accepted the message.
UPDATE messages
SET status = 'sent', attempts = attempts + 1, provider_message_id = %s,
    message_id_header = %s, sent_at = %s, last_error = NULL, lease_until = NULL
WHERE id = %s AND status = 'queued' AND lease_until = %s

-- mark_message_retry --
-- Record a temporary failure and when to try again.
UPDATE messages
SET attempts = attempts + 1, last_error = %s, message_id_header = %s,
    next_attempt_at = %s, lease_until = NULL
WHERE id = %s AND status = 'queued' AND lease_until = %s

-- mark_message_failed --
-- Record a permanent failure; the message is never tried again. `attempts`
-- grows by the given amount: 1 when the provider was asked, 0 when the
-- message failed before that (a template error, no address).
UPDATE messages
SET status = 'failed', attempts = attempts + %s, last_error = %s,
    message_id_header = COALESCE(%s, message_id_header), lease_until = NULL
WHERE id = %s AND status = 'queued' AND lease_until = %s

-- mark_message_suppressed --
-- Record that the message is not sent on purpose (the user unsubscribed or
-- was deleted); it never reaches a provider.
UPDATE messages
SET status = 'suppressed', last_error = %s, lease_until = NULL
WHERE id = %s AND status = 'queued' AND lease_until = %s

-- release_message --
-- Give back a claimed message that was not sent (the process is stopping),
-- so that any process can send it at once.
UPDATE messages
SET lease_until = NULL, next_attempt_at = %s
WHERE id = %s AND status = 'queued' AND lease_until = %s

-- count_queued_messages --
-- How many messages wait for delivery, for the queue-depth gauge.
SELECT COUNT(*) AS queued FROM messages WHERE status = 'queued'

-- count_messages_by_status --
-- Messages per status, for `segflowd status`.
SELECT status, COUNT(*) AS messages FROM messages GROUP BY status ORDER BY status

-- get_message --
-- One message's row by key.
SELECT id, message_key, kind, user_id, template, campaign, run_id, event_id,
       context, status, attempts, last_error, provider_message_id,
       message_id_header, created_at, next_attempt_at, lease_until, sent_at
FROM messages
WHERE message_key = %s

-- get_latest_event --
-- A user's most recent event of one name, to render a transactional
-- template for `segflowd render`.
SELECT id, user_id, name, attributes, created_at
FROM events
WHERE user_id = %s AND name = %s
ORDER BY created_at DESC, id DESC
LIMIT 1

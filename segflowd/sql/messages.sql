-- Statements on the messages table: queueing, claiming and recording delivery.

-- insert_message --
-- Queue one logical message under its unique key. A second insert with the
-- same key (a retried request, a replayed step) is ignored, so a message is
-- committed once.
INSERT IGNORE INTO messages
    (message_key, kind, user_id, template, campaign, run_id, event_id, context,
     status, created_at, next_attempt_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

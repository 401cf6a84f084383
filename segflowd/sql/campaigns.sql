-- Statements on campaign runs, their journal and their pending steps.
--
-- `static_key` and `active_key` are '<campaign>:<user id>'. Campaign names
-- cannot contain ':', so the key is unambiguous for any user id.
--
-- Statements that lock rows name their index (FORCE INDEX). Table statistics
-- lag behind bursts of inserts and deletes, and a plan that scans the whole
-- table would lock, or wait for, rows that other transactions hold.

-- select_user_segment_names --
-- The segments a user is a member of now.
SELECT segment FROM segment_members WHERE user_id = %s

-- select_enrollment_runs --
-- The runs of a user that decide enrollment: live runs, and static runs of
-- any status (a static campaign runs at most once per user).
SELECT id, campaign, status, static_key
FROM campaign_runs
WHERE user_id = %s AND (active_key IS NOT NULL OR static_key IS NOT NULL)

-- insert_run --
-- Start a run. If a run already has the static or active key, this is a
-- no-op (affected rows 0), so concurrent enrollments cannot start two.
INSERT INTO campaign_runs (campaign, user_id, status, static_key, active_key, started_at)
VALUES (%s, %s, 'active', %s, %s, %s)
ON DUPLICATE KEY UPDATE id = id

-- insert_pending_step --
-- The first step of a new run, due at once.
INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at)
VALUES (%s, %s, %s, 0, %s)

-- end_run --
-- Give an active run its final status and free its active key.
UPDATE campaign_runs
SET status = %s, active_key = NULL, ended_at = %s, error = %s
WHERE id = %s AND status = 'active'

-- delete_pending_step --
-- Remove a run's next step: the run has ended.
DELETE FROM pending_steps WHERE run_id = %s

-- wake_waiting_steps --
-- Make a user's steps waiting for this event name due now and remember the
-- event. Only the first matching event wakes a step.
UPDATE pending_steps FORCE INDEX (pending_steps_wait)
SET due_at = %s, woken_event_id = %s
WHERE user_id = %s AND wait_event = %s AND woken_event_id IS NULL

-- select_user_runs --
-- Every run of a user with its next step, newest first.
SELECT r.id, r.campaign, r.status, r.started_at, r.ended_at, r.error,
       p.step_index, p.due_at, p.wait_event
FROM campaign_runs r
LEFT JOIN pending_steps p ON p.run_id = r.id
WHERE r.user_id = %s
ORDER BY r.id DESC

-- lock_active_user_runs --
-- The live runs of a user, locked, before they are stopped.
SELECT id, campaign FROM campaign_runs FORCE INDEX (campaign_runs_user)
WHERE user_id = %s AND status = 'active'
FOR UPDATE

-- delete_user_journal --
-- Remove the journal of every run of a user, because it contains copies of
-- their attributes.
DELETE s
FROM campaign_runs r FORCE INDEX (campaign_runs_user)
STRAIGHT_JOIN run_steps s ON s.run_id = r.id
WHERE r.user_id = %s

-- select_qualifying_users_without_run --
-- Users in all of a campaign's segments and none of its excluded ones who
-- never had a run of it. Parameters: the segment names, the excluded names,
-- the campaign, the number of segment names, the limit.
SELECT m.user_id
FROM segment_members m
WHERE m.segment IN %s
  AND NOT EXISTS (
      SELECT 1 FROM segment_members x WHERE x.user_id = m.user_id AND x.segment IN %s
  )
  AND NOT EXISTS (
      SELECT 1 FROM campaign_runs r WHERE r.user_id = m.user_id AND r.campaign = %s
  )
GROUP BY m.user_id
HAVING COUNT(*) = %s
ORDER BY m.user_id
LIMIT %s

-- select_active_runs_not_qualifying --
-- Live runs of a campaign whose user has left one of its segments or
-- entered an excluded one. Parameters: the campaign, the segment names, the
-- number of segment names, the excluded names, the limit.
SELECT r.id, r.user_id
FROM campaign_runs r
WHERE r.campaign = %s AND r.status = 'active'
  AND (
      (SELECT COUNT(*) FROM segment_members m WHERE m.user_id = r.user_id AND m.segment IN %s) < %s
      OR EXISTS (SELECT 1 FROM segment_members x WHERE x.user_id = r.user_id AND x.segment IN %s)
  )
ORDER BY r.id
LIMIT %s

-- claim_due_steps --
-- Lock due steps of configured campaigns that no live lease holds, oldest
-- first. SKIP LOCKED lets concurrent schedulers take disjoint rows.
SELECT run_id, campaign, user_id, step_index, due_at
FROM pending_steps FORCE INDEX (pending_steps_due)
WHERE due_at <= %s
  AND (lease_until IS NULL OR lease_until < %s)
  AND campaign IN %s
ORDER BY due_at
LIMIT %s
FOR UPDATE SKIP LOCKED

-- lease_steps --
-- Lease claimed steps to one claim token until the given time.
UPDATE pending_steps FORCE INDEX (PRIMARY) SET lease_until = %s, leased_by = %s WHERE run_id IN %s

-- release_steps --
-- Give back steps this claim token still holds, so any scheduler takes them now.
UPDATE pending_steps FORCE INDEX (PRIMARY) SET lease_until = NULL, leased_by = NULL
WHERE run_id IN %s AND leased_by = %s

-- lock_step_users --
-- Lock the users of claimed steps in id order and read their attributes.
-- Users are locked before their steps and runs, as ingest locks them.
SELECT id, attributes FROM users FORCE INDEX (PRIMARY) WHERE id IN %s ORDER BY id FOR UPDATE

-- lock_claimed_steps --
-- Lock claimed steps and their runs, to check that each claim still holds
-- its lease before anything runs. `status` is NULL if the run row is missing.
SELECT p.run_id, p.campaign, p.user_id, p.step_index, p.due_at, p.wait_event,
       p.woken_event_id, p.leased_by, r.status
FROM pending_steps p FORCE INDEX (PRIMARY)
LEFT JOIN campaign_runs r FORCE INDEX (PRIMARY) ON r.id = p.run_id
WHERE p.run_id IN %s
ORDER BY p.run_id
FOR UPDATE

-- select_journals --
-- The steps some runs have executed, in order.
SELECT run_id, step_index, kind, signature, result, user_snapshot, executed_at
FROM run_steps
WHERE run_id IN %s
ORDER BY run_id, step_index

-- select_events_attributes --
-- The attributes of events that woke wait_for_event steps.
SELECT id, attributes FROM events WHERE id IN %s

-- insert_journal_step --
-- Record one executed step. The primary key (run_id, step_index) rejects a
-- second record of the same step.
INSERT INTO run_steps (run_id, step_index, kind, signature, result, user_snapshot, executed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)

-- set_journal_result --
-- Record what a finished wait_for_event step returned to the flow.
UPDATE run_steps SET result = %s WHERE run_id = %s AND step_index = %s

-- select_run_status --
-- The status of one run.
SELECT status FROM campaign_runs WHERE id = %s

-- schedule_next_steps --
-- Point runs at their next step and when it is due, releasing the lease.
-- It is an upsert so that one statement updates a whole batch. The rows
-- exist and this transaction has locked them, so nothing is inserted.
INSERT INTO pending_steps (run_id, campaign, user_id, step_index, due_at, wait_event)
VALUES (%s, %s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE
    step_index = VALUES(step_index), due_at = VALUES(due_at), wait_event = VALUES(wait_event),
    woken_event_id = NULL, lease_until = NULL, leased_by = NULL

-- complete_runs --
-- Mark runs whose flow returned as completed and free their active keys.
UPDATE campaign_runs FORCE INDEX (PRIMARY)
SET status = 'completed', active_key = NULL, ended_at = %s, error = NULL
WHERE id IN %s AND status = 'active'

-- count_runs_by_status --
-- Runs per campaign and status, for `segflowd status`.
SELECT campaign, status, COUNT(*) AS runs
FROM campaign_runs
GROUP BY campaign, status
ORDER BY campaign, status

-- count_due_steps --
-- Steps due now, how many of them a live lease holds, and the oldest due time.
SELECT COUNT(*) AS due,
       COALESCE(SUM(lease_until IS NOT NULL AND lease_until >= %s), 0) AS leased,
       MIN(due_at) AS oldest_due_at
FROM pending_steps
WHERE due_at <= %s

-- count_waiting_steps --
-- Steps of live runs that are not due yet.
SELECT COUNT(*) AS waiting FROM pending_steps WHERE due_at > %s


-- Segment membership: the stored members, their enter/exit records, the
-- definitions last evaluated in full, and the templates that wrap each
-- compiled segment's SQL.
--
-- In templates, {segment_sql} is replaced by a segment's compiled SELECT
-- (used as a derived table), {user_id}, {low}, {high}, {segment} and
-- {limit} become %s parameters, and {segment_name} is a quoted literal.
-- Segment SQL only ever runs inside plain SELECTs: in INSERT ... SELECT,
-- strict mode would turn the conversion warnings of user SQL into errors.
-- The canonical form of an id is CAST(id AS CHAR CHARACTER SET utf8mb4)
-- COLLATE utf8mb4_bin, the order and equality of segment_members.user_id.

-- select_user_segments --
-- Names of the segments a user is a member of.
SELECT segment FROM segment_members WHERE user_id = %s ORDER BY segment

-- user_match_branch --
-- Template: one UNION ALL branch of a per-user evaluation, a row if the
-- user is in the segment. `seg.id = ?` lets the server push the filter
-- into a segment whose own SQL could not take it.
(SELECT 1 AS matched, {segment_name} AS segment
 FROM ({segment_sql}) AS seg
 WHERE seg.id = {user_id}
   AND CAST(seg.id AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin = {user_id}
 LIMIT 1)

-- user_members_branch --
-- Template: the UNION ALL branch of a per-user evaluation that reads the
-- user's stored memberships.
(SELECT 0 AS matched, m.segment AS segment FROM segment_members AS m WHERE m.user_id = {user_id})

-- insert_member --
-- Add a user to a segment; no row changes if another transaction did it first.
INSERT IGNORE INTO segment_members (segment, user_id, entered_at) VALUES (%s, %s, %s)

-- delete_member --
-- Remove a user from a segment; no row changes if another transaction did it first.
DELETE FROM segment_members WHERE segment = %s AND user_id = %s

-- delete_members --
-- Remove several users, given as a tuple, from a segment.
DELETE FROM segment_members WHERE segment = %s AND user_id IN %s

-- insert_change --
-- Record that a user entered or left a segment.
INSERT INTO segment_changes (segment, user_id, change_kind, changed_at) VALUES (%s, %s, %s, %s)

-- batch_upper_bound --
-- The first user id after a batch that starts at the given id and contains
-- the given number of users; no row means the batch runs to the end.
SELECT id FROM users WHERE id >= %s ORDER BY id LIMIT 1 OFFSET %s

-- lock_user_batch --
-- Lock the users of a bounded batch, so that ingest for them waits until
-- the batch's changes commit and no stale result overwrites a newer one.
SELECT COUNT(*) AS locked FROM users WHERE id >= %s AND id < %s FOR UPDATE

-- lock_user_batch_open --
-- Lock the users of the last batch, which has no upper bound.
SELECT COUNT(*) AS locked FROM users WHERE id >= %s FOR UPDATE

-- batch_changes --
-- Template: the enters and exits of one bounded batch of a full
-- evaluation, computed against the stored membership.
WITH seg_batch AS (
    SELECT DISTINCT k.id FROM (
        SELECT CAST(seg.id AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin AS id
        FROM ({segment_sql}) AS seg
        WHERE seg.id IS NOT NULL
    ) AS k
    WHERE k.id >= {low} AND k.id < {high}
)
SELECT 'enter' AS change_kind, b.id AS user_id
FROM seg_batch AS b
WHERE NOT EXISTS (SELECT 1 FROM segment_members AS m WHERE m.segment = {segment} AND m.user_id = b.id)
UNION ALL
SELECT 'exit' AS change_kind, m.user_id AS user_id
FROM segment_members AS m
WHERE m.segment = {segment} AND m.user_id >= {low} AND m.user_id < {high}
  AND NOT EXISTS (SELECT 1 FROM seg_batch AS b WHERE b.id = m.user_id)

-- batch_changes_open --
-- Template: the same for the last batch, which has no upper bound.
WITH seg_batch AS (
    SELECT DISTINCT k.id FROM (
        SELECT CAST(seg.id AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin AS id
        FROM ({segment_sql}) AS seg
        WHERE seg.id IS NOT NULL
    ) AS k
    WHERE k.id >= {low}
)
SELECT 'enter' AS change_kind, b.id AS user_id
FROM seg_batch AS b
WHERE NOT EXISTS (SELECT 1 FROM segment_members AS m WHERE m.segment = {segment} AND m.user_id = b.id)
UNION ALL
SELECT 'exit' AS change_kind, m.user_id AS user_id
FROM segment_members AS m
WHERE m.segment = {segment} AND m.user_id >= {low}
  AND NOT EXISTS (SELECT 1 FROM seg_batch AS b WHERE b.id = m.user_id)

-- start_read_only --
-- Start a transaction that cannot write, for `segflowd check` and `segflowd segment`.
START TRANSACTION READ ONLY

-- segment_limit_zero --
-- Template: run a segment's SQL for its errors only (segflowd check).
SELECT seg.id FROM ({segment_sql}) AS seg LIMIT 0

-- count_segment --
-- Template: how many distinct users a segment's SQL returns.
SELECT COUNT(DISTINCT CAST(seg.id AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin) AS members
FROM ({segment_sql}) AS seg

-- list_segment --
-- Template: the first ids, in id order, that a segment's SQL returns.
SELECT DISTINCT CAST(seg.id AS CHAR CHARACTER SET utf8mb4) COLLATE utf8mb4_bin AS id
FROM ({segment_sql}) AS seg
WHERE seg.id IS NOT NULL
ORDER BY id
LIMIT {limit}

-- count_members --
-- How many users are stored as members of a segment.
SELECT COUNT(*) AS members FROM segment_members WHERE segment = %s

-- select_definitions --
-- Every segment's SQL hash and when it was last evaluated in full.
SELECT name, sql_hash, evaluated_at FROM segment_definitions

-- select_definition --
-- One segment's SQL hash and when it was last evaluated in full.
SELECT name, sql_hash, evaluated_at FROM segment_definitions WHERE name = %s

-- upsert_definition --
-- Record a completed full evaluation of a segment's SQL.
INSERT INTO segment_definitions (name, sql_hash, evaluated_at) VALUES (%s, %s, %s)
ON DUPLICATE KEY UPDATE sql_hash = VALUES(sql_hash), evaluated_at = VALUES(evaluated_at)

-- delete_definition --
-- Forget a segment that is no longer configured.
DELETE FROM segment_definitions WHERE name = %s

-- select_member_segments --
-- Every segment name that has stored members.
SELECT DISTINCT segment FROM segment_members

-- delete_segment_members --
-- Remove up to the given number of members of a segment that is no longer configured.
DELETE FROM segment_members WHERE segment = %s ORDER BY user_id LIMIT %s

-- get_segment_lock --
-- Take the named lock that lets one process at a time evaluate a segment in full.
SELECT GET_LOCK(%s, %s) AS acquired

-- release_segment_lock --
-- Release the named lock of a segment's full evaluation.
SELECT RELEASE_LOCK(%s) AS released

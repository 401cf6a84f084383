-- segflowd schema: every table the daemon uses.
--
-- Applied at every start; each statement is idempotent, so running it again
-- on a live database changes nothing. All times are UTC DATETIME(6): every
-- connection sets time_zone = '+00:00'. Ids and event names use a binary
-- collation so that they round-trip exactly and compare case-sensitively.

-- Users, readable by segment SQL. `attributes` is a JSON object.
CREATE TABLE IF NOT EXISTS users (
    id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    attributes JSON NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Events, readable by segment SQL. `created_at` is when the event happened
-- (the client's timestamp), `received_at` when segflowd stored it.
CREATE TABLE IF NOT EXISTS events (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    attributes JSON NOT NULL,
    created_at DATETIME(6) NOT NULL,
    received_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY events_user_name_time (user_id, name, created_at),
    KEY events_name_time (name, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The answer given to a request carrying an idempotency key (the
-- Idempotency-Key header, or a Segment messageId), so that a retry gets the
-- same answer and stores nothing twice.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    request_hash CHAR(64) NOT NULL,
    event_id BIGINT UNSIGNED NULL,
    response JSON NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (idempotency_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The SQL of each segment as last fully evaluated, so that a changed
-- segment is evaluated in full at start and an unchanged one is not.
CREATE TABLE IF NOT EXISTS segment_definitions (
    name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    sql_hash CHAR(64) NOT NULL,
    evaluated_at DATETIME(6) NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Current members of each segment and when they entered.
CREATE TABLE IF NOT EXISTS segment_members (
    segment VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    entered_at DATETIME(6) NOT NULL,
    PRIMARY KEY (segment, user_id),
    KEY segment_members_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every enter and exit, in order: the record that enrollment consumes and
-- an audit trail of why a user got a campaign.
CREATE TABLE IF NOT EXISTS segment_changes (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    segment VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    change_kind ENUM('enter', 'exit') NOT NULL,
    changed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY segment_changes_user (user_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per campaign run. `static_key` is set for static campaigns and is
-- unique, so a user gets at most one static run ever; `active_key` is set
-- while a run is active, so a user has at most one live run per campaign.
CREATE TABLE IF NOT EXISTS campaign_runs (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    campaign VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status ENUM('active', 'completed', 'exited', 'failed', 'diverged') NOT NULL,
    static_key VARCHAR(520) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    active_key VARCHAR(520) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    started_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    error TEXT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY campaign_runs_static (static_key),
    UNIQUE KEY campaign_runs_active (active_key),
    KEY campaign_runs_user (user_id, campaign),
    KEY campaign_runs_campaign_status (campaign, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The journal of a run: each step that ran, what the flow yielded, what it
-- returned to the flow and the user as the flow saw them, so that a replay
-- gives the flow the same values.
CREATE TABLE IF NOT EXISTS run_steps (
    run_id BIGINT UNSIGNED NOT NULL,
    step_index INT NOT NULL,
    kind VARCHAR(32) NOT NULL,
    signature JSON NOT NULL,
    result JSON NULL,
    user_snapshot JSON NOT NULL,
    executed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (run_id, step_index)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The next step of each live run and when it is due. A worker claims due
-- rows with SELECT ... FOR UPDATE SKIP LOCKED and sets a lease; a row whose
-- lease has passed is claimed again, so a dead worker's step is not lost.
CREATE TABLE IF NOT EXISTS pending_steps (
    run_id BIGINT UNSIGNED NOT NULL,
    campaign VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    step_index INT NOT NULL,
    due_at DATETIME(6) NOT NULL,
    wait_event VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    woken_event_id BIGINT UNSIGNED NULL,
    lease_until DATETIME(6) NULL,
    leased_by VARCHAR(64) NULL,
    PRIMARY KEY (run_id),
    KEY pending_steps_due (due_at),
    KEY pending_steps_wait (user_id, wait_event)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every logical message, committed once under `message_key` before it is
-- sent: 'campaign:<run>:<step>' or 'transaction:<name>:<event id>'.
CREATE TABLE IF NOT EXISTS messages (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    kind ENUM('campaign', 'transactional') NOT NULL,
    user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    template VARCHAR(255) NOT NULL,
    campaign VARCHAR(255) NULL,
    run_id BIGINT UNSIGNED NULL,
    event_id BIGINT UNSIGNED NULL,
    context JSON NOT NULL,
    status ENUM('queued', 'sent', 'failed', 'suppressed') NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    provider_message_id VARCHAR(255) NULL,
    message_id_header VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    next_attempt_at DATETIME(6) NOT NULL,
    lease_until DATETIME(6) NULL,
    sent_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY messages_key (message_key),
    KEY messages_due (status, next_attempt_at),
    KEY messages_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

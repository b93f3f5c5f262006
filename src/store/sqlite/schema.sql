-- The embedded budget store's schema: created if missing on every open,
-- so a new store and an old one end with the same tables. Columns added
-- after the first release are in migrate.rs, added in place.
CREATE TABLE IF NOT EXISTS scopes (
    key TEXT PRIMARY KEY,
    limit_nanos INTEGER NOT NULL,
    extra_nanos INTEGER NOT NULL DEFAULT 0,
    spent_nanos INTEGER NOT NULL DEFAULT 0,
    reserved_nanos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    decision_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    model TEXT NOT NULL,
    is_deferrable INTEGER NOT NULL,
    amount_nanos INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    actual_nanos INTEGER,
    input_tokens INTEGER,
    cached_input_tokens INTEGER,
    output_tokens INTEGER,
    failed INTEGER,
    settled_ms INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_held ON reservations (expires_ms) WHERE state = 'reserved' AND scopes != '';
-- Each distinct label set once; decision rows name it by ID.
CREATE TABLE IF NOT EXISTS label_sets (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    scope TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    amount_nanos INTEGER NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_ms INTEGER NOT NULL DEFAULT 0,
    added_nanos INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS escalations_scope ON escalations (scope, created_ms);
CREATE TABLE IF NOT EXISTS outcome_events (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    status TEXT NOT NULL,
    value_usd REAL,
    human_minutes REAL,
    at_ms INTEGER NOT NULL,
    recorded_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outcome_events_at ON outcome_events (at_ms);
-- An outcome's last record, read when it is recorded again.
CREATE INDEX IF NOT EXISTS outcome_events_outcome ON outcome_events (workflow, outcome_id);

CREATE TABLE IF NOT EXISTS feedback_events (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    model TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_events_at ON feedback_events (at_ms);
CREATE TABLE IF NOT EXISTS learn_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS learn_events_workflow ON learn_events (workflow, seq);
-- The highest tier each outcome's attempts were rejected at, so that a retry
-- cascades past it on whichever sidecar (or in `explain`) it lands.
CREATE TABLE IF NOT EXISTS rejections (
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (workflow, outcome_id)
);
CREATE INDEX IF NOT EXISTS rejections_at ON rejections (at_ms);

-- Each workflow's complexity histogram under each understanding model
-- (its checksum tag): how many Routes scored in each bin, which `top_share`
-- rules read as quantiles.
CREATE TABLE IF NOT EXISTS score_counts (
    workflow TEXT NOT NULL,
    model TEXT NOT NULL,
    bin INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (workflow, model, bin)
);

-- Deployments and their pipeline stages. Kept to portable SQL (TEXT
-- timestamps in RFC 3339 UTC, no SQLite-only types) so PostgreSQL can serve
-- the same schema.

CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,
    sandbox      TEXT NOT NULL,
    repository   TEXT NOT NULL,
    branch       TEXT NOT NULL,
    node         TEXT NOT NULL,
    username     TEXT NOT NULL,
    state        TEXT NOT NULL,
    port         INTEGER NOT NULL,
    commit_sha   TEXT,
    container    TEXT,
    failed_stage TEXT,
    reason       TEXT,
    -- Highest sequence number applied from the agent (events and log lines
    -- share one counter): where a replay would resume.
    last_seq     BIGINT NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    completed_at TEXT
);

CREATE INDEX deployments_by_service ON deployments (sandbox, repository);
CREATE INDEX deployments_by_state ON deployments (state);
CREATE INDEX deployments_by_created ON deployments (created_at);

CREATE TABLE deployment_stages (
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    -- Order in the pipeline; stages an agent reports beyond the known
    -- pipeline are appended.
    position      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    started_at    TEXT,
    completed_at  TEXT,
    reason        TEXT,
    PRIMARY KEY (deployment_id, name)
);

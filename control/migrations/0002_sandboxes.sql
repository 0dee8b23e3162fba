-- Environments, templates, sandboxes, port allocations and the audit trail.
-- Portable SQL as in 0001: TEXT timestamps (RFC 3339 UTC), no SQLite-only
-- types, no autoincrement (ids are UUIDs chosen by the control plane).

CREATE TABLE environments (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE templates (
    name           TEXT PRIMARY KEY,
    environment    TEXT REFERENCES environments (name),
    gateway_branch TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE template_services (
    template TEXT NOT NULL REFERENCES templates (name) ON DELETE CASCADE,
    service  TEXT NOT NULL,
    -- NULL: the service is served by OCP.
    branch   TEXT,
    PRIMARY KEY (template, service)
);

CREATE TABLE sandboxes (
    name           TEXT PRIMARY KEY,
    template       TEXT REFERENCES templates (name),
    environment    TEXT REFERENCES environments (name),
    gateway_branch TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE sandbox_services (
    sandbox    TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    service    TEXT NOT NULL,
    branch     TEXT,
    -- 'sandbox' or 'ocp': where the sandbox's gateway sends this service.
    route_mode TEXT NOT NULL,
    PRIMARY KEY (sandbox, service)
);

-- The primary key is what makes allocation conflict-free: two sandboxes can
-- never hold the same port of a node kind, whatever the application does.
CREATE TABLE port_allocations (
    node_kind  TEXT NOT NULL,
    port       INTEGER NOT NULL,
    sandbox    TEXT NOT NULL REFERENCES sandboxes (name) ON DELETE CASCADE,
    service    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (node_kind, port),
    UNIQUE (sandbox, node_kind, service)
);

-- Variables, secrets (ciphertext only) and files of environments, and the
-- overrides templates and sandboxes layer on top of them.
CREATE TABLE layer_entries (
    owner_kind  TEXT NOT NULL,
    owner       TEXT NOT NULL,
    entry_kind  TEXT NOT NULL,
    entry_key   TEXT NOT NULL,
    entry_value TEXT NOT NULL,
    PRIMARY KEY (owner_kind, owner, entry_kind, entry_key)
);

ALTER TABLE deployments ADD COLUMN environment TEXT;
-- Set once the agent acknowledged the deployment: a queued deployment without
-- it was never sent, and after a restart cannot be (the credentials are gone).
ALTER TABLE deployments ADD COLUMN dispatched_at TEXT;

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          TEXT NOT NULL,
    username    TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    sandbox     TEXT,
    repository  TEXT,
    branch      TEXT,
    environment TEXT,
    deployment  TEXT,
    -- What else the action named: a template, a route mode, a clone's source.
    detail      TEXT
);

CREATE INDEX audit_by_at ON audit_log (at);
CREATE INDEX audit_by_user ON audit_log (username);
CREATE INDEX audit_by_sandbox ON audit_log (sandbox);

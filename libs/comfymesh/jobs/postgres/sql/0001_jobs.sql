-- The job store's first schema: the SQLite store's tables, plus a lease (owner, lease_until, epoch) per job,
-- a sequence for queue numbers and a cancel flag for jobs another orchestrator runs.
CREATE SEQUENCE job_numbers;

CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    number DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    prompt_json TEXT NOT NULL,
    extra_data_json TEXT NOT NULL,
    client_id TEXT NOT NULL DEFAULT '',
    outputs_to_run TEXT NOT NULL,
    outputs_json TEXT NOT NULL DEFAULT '{}',
    error_json TEXT,
    submitted_json TEXT,
    owner TEXT,
    lease_until TIMESTAMPTZ,
    epoch BIGINT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_queue ON jobs (status, number, seq);
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE owner IS NOT NULL;

CREATE TABLE idempotency_keys (
    user_name TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    PRIMARY KEY (user_name, key)
);
CREATE INDEX idempotency_job ON idempotency_keys (job_id);

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    node_id TEXT NOT NULL DEFAULT '',
    data_json TEXT NOT NULL DEFAULT '{}',
    ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE node_states (
    job_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    class_type TEXT NOT NULL,
    state TEXT NOT NULL,
    ui_json TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, node_id)
);

CREATE TABLE node_cache (
    signature TEXT PRIMARY KEY,
    class_type TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    ui_json TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION NOT NULL
);

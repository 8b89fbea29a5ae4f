-- Secrets every orchestrator sharing the store uses (the webhook signing secret): created once by whichever
-- orchestrator asks first (INSERT ... ON CONFLICT DO NOTHING), read by the others.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

-- Live previews relayed between orchestrators sharing the store: the orchestrator running a job writes each
-- preview here and NOTIFYs its seq; every other one reads the row and hands it to its subscribers. UNLOGGED:
-- no WAL, emptied by a crash, as a preview may be lost anyway. Rows live for seconds (pruned by the writers).
CREATE UNLOGGED TABLE previews (
    seq BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    node_id TEXT NOT NULL,
    format TEXT NOT NULL,
    data BYTEA NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

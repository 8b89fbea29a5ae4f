-- Model files' digests: one row per file of a models location (COMFYMESH_MODELS_URL and folder), hashed once
-- per version (an S3 ETag, a local file's size and mtime) and shared by every orchestrator.
CREATE TABLE model_digests (
    location TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    recorded DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (location, name)
);

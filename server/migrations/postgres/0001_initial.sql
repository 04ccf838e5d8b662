-- The schema of version 1 on PostgreSQL: the same tables and columns as
-- migrations/sqlite/0001_initial.sql, in PostgreSQL's types (64-bit integers where SQLite's
-- INTEGER holds them), so that the store's queries read and write both alike. A released file
-- never changes: the migrator refuses a database whose applied checksum differs.
CREATE TABLE volunteers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hex TEXT NOT NULL,
    url TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    draining BIGINT NOT NULL DEFAULT 0,
    quarantine TEXT
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE generations (
    repo TEXT NOT NULL,
    generation BIGINT NOT NULL,
    published_at BIGINT NOT NULL,
    files BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    changed_files BIGINT NOT NULL,
    PRIMARY KEY (repo, generation)
);

-- The schema as it stood when versioned migrations began. `IF NOT EXISTS` lets a database
-- made before then (which has these tables but no `_sqlx_migrations`) take this version as
-- applied; `Store::open` first gives such a database the columns added since its tables were
-- made. Every later change is a new file, and a released file never changes: the migrator
-- refuses a database whose applied checksum differs.
CREATE TABLE IF NOT EXISTS volunteers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hex TEXT NOT NULL,
    url TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0,
    quarantine TEXT
);

CREATE TABLE IF NOT EXISTS enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);

CREATE TABLE IF NOT EXISTS generations (
    repo TEXT NOT NULL,
    generation INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    changed_files INTEGER NOT NULL,
    PRIMARY KEY (repo, generation)
);

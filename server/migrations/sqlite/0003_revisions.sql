-- Counters that every change of a kind of durable fact bumps in the same transaction: a
-- server sharing the database (a replica) polls them, and on PostgreSQL is also told at once
-- (NOTIFY mirrorswarm_changes), to reload what changed. 'volunteers': an enrollment, a
-- revocation, a drain or resume, a quarantine or its release.
CREATE TABLE revisions (
    name TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);

INSERT INTO revisions (name, revision) VALUES ('volunteers', 0);

-- What replicas sharing the database need to serve a generation another one published: its
-- signed manifest, and the sync artifacts of each large file (torrent and block signature,
-- keyed by the file's SHA-256, as under <data-dir>/artifacts/). Written by the publishing
-- server in the transaction that records the generation; a server alone on its database
-- keeps them in its data directory only and writes none here.
CREATE TABLE manifests (
    repo TEXT NOT NULL,
    generation INTEGER NOT NULL,
    signed BLOB NOT NULL,
    -- The public URL of the server that published it, for the log and the operator.
    published_by TEXT NOT NULL,
    PRIMARY KEY (repo, generation)
);

CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    torrent BLOB NOT NULL,
    signature BLOB NOT NULL
);

-- One publisher of a repository at a time across replicas: a lease its holder renews while it
-- publishes and that lapses by itself if the holder dies.
CREATE TABLE publish_leases (
    repo TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

-- The servers of the mirror, each as it last said it was alive (every few seconds): what
-- volunteers are told to announce to, so that adding a server needs no volunteer restarted,
-- and whose counters make the mirror's statistics.
CREATE TABLE servers (
    public_url TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL,
    -- Its counters then (JSON, as its /api/stats), summed into the mirror's.
    stats TEXT NOT NULL DEFAULT '{}'
);

-- 'generations': a generation recorded with its manifest.
INSERT INTO revisions (name, revision) VALUES ('generations', 0);

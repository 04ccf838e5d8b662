-- The mirror this database belongs to: the fingerprint of the key that signs its manifests,
-- written by the first server that opens it. A server with another key is refused at start:
-- servers sharing a database are replicas of one mirror and sign with one key.
CREATE TABLE mirror (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    key_fingerprint TEXT NOT NULL
);

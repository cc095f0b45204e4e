-- The cluster's tables (src/cluster). A cluster needs a PostgreSQL state store (check-config
-- refuses [cluster] with SQLite); they exist here so that both stores have the same versions.
CREATE TABLE ms_instance (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    admin_url TEXT NOT NULL DEFAULT '',
    heartbeat TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    stopping BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE ms_lease (
    mailbox TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

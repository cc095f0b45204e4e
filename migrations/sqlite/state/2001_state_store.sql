-- mailsync's state store (tables prefixed ms_, so it may share the business database).

-- Per mailbox and synced folder: the EWS sync states. folder_key is the data area (contacts,
-- calendar, tasks) or, for mail, the Exchange folder id; '' is the mailbox's folder hierarchy.
CREATE TABLE ms_folder_state (
    mailbox TEXT NOT NULL,
    folder_key TEXT NOT NULL,
    ews_folder_id TEXT,
    sync_state TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (mailbox, folder_key)
);

-- Per synced item: the pair of ids, the versions last written or seen on each side, and the
-- field values last synced (JSON object), the base of the three-way merge.
CREATE TABLE ms_item_map (
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    crm_id INTEGER NOT NULL,
    ews_item_id TEXT NOT NULL,
    change_key TEXT,
    crm_version INTEGER,
    fields TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (mailbox, crm_table, crm_id)
);
-- One Exchange item maps to one CRM row: a duplicate mapping is impossible.
CREATE UNIQUE INDEX ms_item_map_ews ON ms_item_map (mailbox, ews_item_id);

-- Cursors over crm_changes (one per business database and consumer): (txid, seq) on
-- PostgreSQL, seq alone (txid 0) on SQLite.
CREATE TABLE ms_cursor (
    name TEXT PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Every conflict: both sides changed the same fields since the last sync.
CREATE TABLE ms_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    crm_id INTEGER,
    ews_item_id TEXT,
    fields TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('crm', 'exchange')),
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Items that could not be synced, with the reason and when to try again. A side the item is
-- not known on yet is 0 / '' (not NULL, so the unique key holds on every database).
CREATE TABLE ms_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    crm_id INTEGER NOT NULL DEFAULT 0,
    ews_item_id TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    next_retry_at TEXT,
    first_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX ms_failures_item ON ms_failures (mailbox, crm_table, crm_id, ews_item_id);

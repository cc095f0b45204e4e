-- The conflict log keeps both sides' values and the merged result (JSON objects field -> value)
-- next to the field names, so an administrator can see what was decided without the item.
ALTER TABLE ms_conflicts ADD COLUMN crm_values TEXT NOT NULL DEFAULT '{}';
ALTER TABLE ms_conflicts ADD COLUMN ews_values TEXT NOT NULL DEFAULT '{}';
ALTER TABLE ms_conflicts ADD COLUMN merged TEXT NOT NULL DEFAULT '{}';
-- Pages of the log by mailbox (newest first) and the retention job's cut by age.
CREATE INDEX ms_conflicts_mailbox ON ms_conflicts (mailbox, id);
CREATE INDEX ms_conflicts_at ON ms_conflicts (at);

-- Mailboxes the running service had configured, and when last: the state of a mailbox that
-- left the configuration is pruned once it has been gone for the retention period, so an
-- accidental removal that is undone in time keeps its mappings.
CREATE TABLE ms_mailboxes (
    mailbox TEXT PRIMARY KEY,
    last_configured_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The origin of a change: the mailbox whose sync step wrote it (NULL for every other writer).
-- SQLite has one writer at a time: mailsync's write transaction marks the changes it logged
-- itself before it commits (src/cluster/fence.rs); the triggers stay as they are. The change
-- feed does not queue a change back to the mailbox that made it.
ALTER TABLE crm_changes ADD COLUMN origin TEXT;

-- The work queue from the CRM change feed to the folders: the CRM rows a mailbox has to look
-- at. The feed adds rows (a repeat is a no-op), a folder's step removes what it handled, so a
-- crash between the two repeats work instead of losing it.
CREATE TABLE ms_pending (
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    crm_id BIGINT NOT NULL,
    -- Bumped each time the row is queued again: a step removes only the entries it read, so
    -- a change queued while the step ran is not lost.
    token BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, crm_table, crm_id)
);

-- Integrity and safety (plan before writing, no lost deletes).

-- stamped: the Exchange item carries the CRM-id stamp (false for an imported item whose stamp
-- is still to be written: it is batched, or written with the item's next update).
-- unverified: the item was written (created in Exchange or imported from it) after the
-- folder's stored sync state was taken, so a SyncFolderItems from that state may never report
-- it — not even its deletion (Exchange reports net changes). Cleared when a stored state
-- covers it; a complete read that did not report it checks it with GetItem.
ALTER TABLE ms_item_map ADD COLUMN stamped BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE ms_item_map ADD COLUMN unverified BOOLEAN NOT NULL DEFAULT FALSE;
-- Before this migration an unstamped import was a mapping without a ChangeKey.
UPDATE ms_item_map SET stamped = FALSE, unverified = TRUE
 WHERE change_key IS NULL AND crm_table IN ('crm_contacts', 'crm_appointments', 'crm_tasks');

-- Deletes held by the delete breaker until an administrator approves or rejects them. side is
-- where the delete would be applied ('crm': the item is gone from Exchange; 'exchange': the
-- row is gone from the CRM). scope is 'own', 'shared' or a mail folder path.
CREATE TABLE ms_held (
    id BIGSERIAL PRIMARY KEY,
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    scope TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('crm', 'exchange')),
    crm_id BIGINT NOT NULL,
    ews_item_id TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    decision TEXT CHECK (decision IN ('approve', 'reject')),
    held_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ms_held_item ON ms_held (mailbox, crm_table, crm_id);

-- Records that the first contact could not link unambiguously (one record, several
-- candidates): left alone, on both sides, until an administrator asks for them to be synced as
-- separate records. side says which side's record `record` names ('crm': a CRM id; 'exchange':
-- an Exchange item id).
CREATE TABLE ms_ambiguous (
    mailbox TEXT NOT NULL,
    crm_table TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('crm', 'exchange')),
    record TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    candidates TEXT NOT NULL DEFAULT '[]',
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox, crm_table, side, record)
);

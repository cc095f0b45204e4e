-- One row per Exchange item in each synced table: importing is idempotent. A row imported
-- from Exchange is found by its ews_id before an insert; this index refuses the second row
-- when two writers race. Rows without an Exchange id (NULL) are not constrained.
-- Existing duplicates are resolved before this runs (mailsync migrate: the oldest row keeps
-- the id, the others lose it, and each case is reported).
CREATE UNIQUE INDEX crm_contacts_ews_id ON crm_contacts (ews_id) WHERE ews_id IS NOT NULL;
CREATE UNIQUE INDEX crm_appointments_ews_id ON crm_appointments (ews_id) WHERE ews_id IS NOT NULL;
CREATE UNIQUE INDEX crm_tasks_ews_id ON crm_tasks (ews_id) WHERE ews_id IS NOT NULL;
CREATE UNIQUE INDEX crm_mail_folders_ews_id ON crm_mail_folders (ews_id) WHERE ews_id IS NOT NULL;
CREATE UNIQUE INDEX crm_mails_ews_id ON crm_mails (ews_id) WHERE ews_id IS NOT NULL;

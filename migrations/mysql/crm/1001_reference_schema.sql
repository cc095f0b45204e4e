-- The reference integration schema on MariaDB (10.6+) and MySQL (8.0+): the same contract as
-- the PostgreSQL and SQLite schemas (docs/crm-schema.md), in MySQL's types.
--
-- * Exchange ids (`ews_id`) compare case-sensitively (utf8mb4_bin): they are base64 and may
--   differ by case only; a case-insensitive collation would make two items one. The value
--   lists of the CHECK constraints are case-sensitive too, as on PostgreSQL. Other text uses
--   utf8mb4_unicode_ci, MySQL's usual choice for names and subjects.
-- * Timestamps are DATETIME(6) in UTC (not TIMESTAMP: no 2038 limit, no session time zone
--   conversion); mailsync's sessions run with time_zone '+00:00'.
-- * categories is a JSON array in LONGTEXT (MySQL has no arrays); body, notes and mime are
--   LONG* (TEXT holds only 64 KB). Large mails need max_allowed_packet above their size.
-- * Every synced table carries `version` (bumped on each change by a trigger) and
--   `updated_at`; deletes are real DELETEs; every insert, update and delete lands in
--   crm_changes. Each trigger is one statement, so no DELIMITER is needed anywhere.
-- * Exchange ids (`ews_id`) are unique per table where set: a row imported from Exchange is
--   found, never inserted twice.

CREATE TABLE crm_tenants (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name TEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_operators (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    personnel_no VARCHAR(255) NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_operators_tenant_fk FOREIGN KEY (tenant_id) REFERENCES crm_tenants (id),
    UNIQUE KEY crm_operators_personnel_no (tenant_id, personnel_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_contacts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    owner_id BIGINT,                                  -- NULL: shared by the tenant
    given_name TEXT,
    surname TEXT,
    company TEXT,
    job_title TEXT,
    email1 TEXT,
    email2 TEXT,
    email3 TEXT,
    business_phone TEXT,
    mobile_phone TEXT,
    home_phone TEXT,
    street TEXT,
    postal_code TEXT,
    city TEXT,
    country TEXT,
    notes LONGTEXT,
    categories LONGTEXT NOT NULL DEFAULT ('[]') CHECK (JSON_VALID(categories) AND JSON_TYPE(categories) = 'ARRAY'),
    ews_id VARCHAR(512) COLLATE utf8mb4_bin,          -- set by mailsync: the Exchange item id
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_contacts_tenant_fk FOREIGN KEY (tenant_id) REFERENCES crm_tenants (id),
    CONSTRAINT crm_contacts_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    KEY crm_contacts_owner (tenant_id, owner_id),
    UNIQUE KEY crm_contacts_ews_id (ews_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_appointments (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    owner_id BIGINT NOT NULL,
    subject TEXT,
    location TEXT,
    body LONGTEXT,
    starts_at DATETIME(6) NOT NULL,                   -- UTC
    ends_at DATETIME(6) NOT NULL,                     -- UTC
    all_day BOOLEAN NOT NULL DEFAULT FALSE,
    time_zone VARCHAR(64) NOT NULL DEFAULT 'UTC',     -- IANA name
    recurrence TEXT,                                  -- RFC 5545 RRULE, NULL for single appointments
    reminder_minutes INTEGER,
    show_as VARCHAR(20) NOT NULL DEFAULT 'busy' CHECK (show_as COLLATE utf8mb4_bin IN ('free', 'tentative', 'busy', 'oof', 'working_elsewhere')),
    categories LONGTEXT NOT NULL DEFAULT ('[]') CHECK (JSON_VALID(categories) AND JSON_TYPE(categories) = 'ARRAY'),
    uid TEXT,                                         -- iCalendar UID, links copies of one appointment
    ews_id VARCHAR(512) COLLATE utf8mb4_bin,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_appointments_tenant_fk FOREIGN KEY (tenant_id) REFERENCES crm_tenants (id),
    CONSTRAINT crm_appointments_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    KEY crm_appointments_owner (owner_id),
    UNIQUE KEY crm_appointments_ews_id (ews_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_tasks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    owner_id BIGINT NOT NULL,
    subject TEXT,
    body LONGTEXT,
    start_date DATE,
    due_date DATE,
    status VARCHAR(20) NOT NULL DEFAULT 'not_started' CHECK (status COLLATE utf8mb4_bin IN ('not_started', 'in_progress', 'completed', 'waiting', 'deferred')),
    percent_complete INTEGER NOT NULL DEFAULT 0 CHECK (percent_complete BETWEEN 0 AND 100),
    importance VARCHAR(10) NOT NULL DEFAULT 'normal' CHECK (importance COLLATE utf8mb4_bin IN ('low', 'normal', 'high')),
    completed_at DATETIME(6),
    categories LONGTEXT NOT NULL DEFAULT ('[]') CHECK (JSON_VALID(categories) AND JSON_TYPE(categories) = 'ARRAY'),
    ews_id VARCHAR(512) COLLATE utf8mb4_bin,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_tasks_tenant_fk FOREIGN KEY (tenant_id) REFERENCES crm_tenants (id),
    CONSTRAINT crm_tasks_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    KEY crm_tasks_owner (owner_id),
    UNIQUE KEY crm_tasks_ews_id (ews_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_mail_folders (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    parent_id BIGINT,
    name TEXT NOT NULL,
    -- Unique per owner; several NULLs are allowed (MySQL unique keys ignore NULL).
    role VARCHAR(20) CHECK (role COLLATE utf8mb4_bin IN ('inbox', 'sentitems', 'drafts', 'deleteditems', 'junkemail', 'outbox', 'archive')),
    sync_from DATE,
    sync_excluded BOOLEAN NOT NULL DEFAULT FALSE,
    ews_id VARCHAR(512) COLLATE utf8mb4_bin,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_mail_folders_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    CONSTRAINT crm_mail_folders_parent_fk FOREIGN KEY (parent_id) REFERENCES crm_mail_folders (id) ON DELETE CASCADE,
    UNIQUE KEY crm_mail_folders_role (owner_id, role),
    UNIQUE KEY crm_mail_folders_ews_id (ews_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_mails (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    folder_id BIGINT NOT NULL,
    internet_message_id VARCHAR(998),
    subject TEXT,
    sender TEXT,
    recipients LONGTEXT,
    sent_at DATETIME(6),
    is_read BOOLEAN NOT NULL DEFAULT FALSE,
    mime LONGBLOB,
    size BIGINT,
    ews_id VARCHAR(512) COLLATE utf8mb4_bin,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_mails_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    CONSTRAINT crm_mails_folder_fk FOREIGN KEY (folder_id) REFERENCES crm_mail_folders (id) ON DELETE CASCADE,
    KEY crm_mails_folder (folder_id),
    KEY crm_mails_message_id (owner_id, internet_message_id(250)),
    UNIQUE KEY crm_mails_ews_id (ews_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE crm_outbox (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    recipients LONGTEXT NOT NULL,
    subject TEXT,
    mime LONGBLOB NOT NULL,
    state VARCHAR(10) NOT NULL DEFAULT 'pending' CHECK (state COLLATE utf8mb4_bin IN ('pending', 'sent', 'failed')),
    sent_at DATETIME(6),
    error TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT crm_outbox_owner_fk FOREIGN KEY (owner_id) REFERENCES crm_operators (id),
    KEY crm_outbox_pending (owner_id, state)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The change log. owner_id and tenant_id are copied from the row so a delete can be routed to
-- its mailbox after the row is gone.
--
-- `id` is handed out at insert (AUTO_INCREMENT), so like PostgreSQL's seq it can commit out
-- of order. `seq` is the commit order: NULL when written, stamped by the change reader
-- (mailsync) on rows whose transaction has committed — it takes the counter row below, picks
-- unstamped rows with FOR UPDATE SKIP LOCKED (a row of a transaction still open is locked, so
-- it is left for a later round) and numbers them after every number handed out before. A
-- change that commits late therefore gets a higher seq than any change already read: a seq
-- cursor never passes a change it has not seen (docs/crm-schema.md). Writers never wait for
-- the reader, nor the reader for writers.
CREATE TABLE crm_changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    seq BIGINT,
    table_name VARCHAR(64) NOT NULL,
    row_id BIGINT NOT NULL,
    op CHAR(1) NOT NULL CHECK (op COLLATE utf8mb4_bin IN ('I', 'U', 'D')),
    owner_id BIGINT,
    tenant_id BIGINT,
    at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    KEY crm_changes_seq (seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The last seq stamped; its row lock serialises the stampers (several mailsync instances).
CREATE TABLE crm_change_counter (
    id TINYINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT INTO crm_change_counter (id, seq) VALUES (1, 0);

CREATE TRIGGER crm_operators_version BEFORE UPDATE ON crm_operators FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_operators_insert AFTER INSERT ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', NEW.id, 'I', NULL, NEW.tenant_id);
CREATE TRIGGER crm_operators_update AFTER UPDATE ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', NEW.id, 'U', NULL, NEW.tenant_id);
CREATE TRIGGER crm_operators_delete AFTER DELETE ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', OLD.id, 'D', NULL, OLD.tenant_id);

CREATE TRIGGER crm_contacts_version BEFORE UPDATE ON crm_contacts FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_contacts_insert AFTER INSERT ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_contacts_update AFTER UPDATE ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_contacts_delete AFTER DELETE ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);

CREATE TRIGGER crm_appointments_version BEFORE UPDATE ON crm_appointments FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_appointments_insert AFTER INSERT ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_appointments_update AFTER UPDATE ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_appointments_delete AFTER DELETE ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);

CREATE TRIGGER crm_tasks_version BEFORE UPDATE ON crm_tasks FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_tasks_insert AFTER INSERT ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_tasks_update AFTER UPDATE ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
CREATE TRIGGER crm_tasks_delete AFTER DELETE ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);

CREATE TRIGGER crm_mail_folders_version BEFORE UPDATE ON crm_mail_folders FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_mail_folders_insert AFTER INSERT ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', NEW.id, 'I', NEW.owner_id, NULL);
CREATE TRIGGER crm_mail_folders_update AFTER UPDATE ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', NEW.id, 'U', NEW.owner_id, NULL);
CREATE TRIGGER crm_mail_folders_delete AFTER DELETE ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', OLD.id, 'D', OLD.owner_id, NULL);

CREATE TRIGGER crm_mails_version BEFORE UPDATE ON crm_mails FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_mails_insert AFTER INSERT ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', NEW.id, 'I', NEW.owner_id, NULL);
CREATE TRIGGER crm_mails_update AFTER UPDATE ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', NEW.id, 'U', NEW.owner_id, NULL);
CREATE TRIGGER crm_mails_delete AFTER DELETE ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', OLD.id, 'D', OLD.owner_id, NULL);

CREATE TRIGGER crm_outbox_version BEFORE UPDATE ON crm_outbox FOR EACH ROW SET NEW.version = OLD.version + 1, NEW.updated_at = UTC_TIMESTAMP(6);
CREATE TRIGGER crm_outbox_insert AFTER INSERT ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', NEW.id, 'I', NEW.owner_id, NULL);
CREATE TRIGGER crm_outbox_update AFTER UPDATE ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', NEW.id, 'U', NEW.owner_id, NULL);
CREATE TRIGGER crm_outbox_delete AFTER DELETE ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', OLD.id, 'D', OLD.owner_id, NULL);

-- MySQL runs no triggers for rows a foreign key cascade deletes. Deleting a mail folder takes
-- its subfolders and their mails with it (ON DELETE CASCADE), so their deletes are recorded
-- here, before the cascade, as PostgreSQL's and SQLite's triggers record them.
CREATE TRIGGER crm_mail_folders_cascade BEFORE DELETE ON crm_mail_folders FOR EACH ROW
INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id)
WITH RECURSIVE sub (id, owner_id) AS (
    SELECT id, owner_id FROM crm_mail_folders WHERE parent_id = OLD.id
    UNION ALL
    SELECT f.id, f.owner_id FROM crm_mail_folders f JOIN sub ON f.parent_id = sub.id
)
SELECT 'crm_mails', m.id, 'D', m.owner_id, NULL FROM crm_mails m WHERE m.folder_id = OLD.id OR m.folder_id IN (SELECT id FROM sub)
UNION ALL
SELECT 'crm_mail_folders', id, 'D', owner_id, NULL FROM sub;

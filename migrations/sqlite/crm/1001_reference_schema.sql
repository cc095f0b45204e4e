-- The reference integration schema: the contract an ERP/CRM integrates with (docs/crm-schema.md).
-- Every synced table carries `version` (bumped on each change by a trigger) and `updated_at`;
-- deletes are real DELETEs; every insert, update and delete lands in crm_changes.

CREATE TABLE crm_tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE crm_operators (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES crm_tenants(id),
    personnel_no TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_contacts (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES crm_tenants(id),
    owner_id INTEGER REFERENCES crm_operators(id),   -- NULL: shared by the tenant
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
    notes TEXT,
    categories TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(categories) AND json_type(categories) = 'array'),
    ews_id TEXT,                                      -- set by mailsync: the Exchange item id
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_appointments (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES crm_tenants(id),
    owner_id INTEGER NOT NULL REFERENCES crm_operators(id),
    subject TEXT,
    location TEXT,
    body TEXT,
    starts_at TEXT NOT NULL,                          -- UTC
    ends_at TEXT NOT NULL,                            -- UTC
    all_day BOOLEAN NOT NULL DEFAULT FALSE,
    time_zone TEXT NOT NULL DEFAULT 'UTC',            -- IANA name
    recurrence TEXT,                                  -- RFC 5545 RRULE, NULL for single appointments
    reminder_minutes INTEGER,
    show_as TEXT NOT NULL DEFAULT 'busy' CHECK (show_as IN ('free', 'tentative', 'busy', 'oof', 'working_elsewhere')),
    categories TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(categories) AND json_type(categories) = 'array'),
    uid TEXT,                                         -- iCalendar UID, links copies of one appointment
    ews_id TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_tasks (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES crm_tenants(id),
    owner_id INTEGER NOT NULL REFERENCES crm_operators(id),
    subject TEXT,
    body TEXT,
    start_date DATE,
    due_date DATE,
    status TEXT NOT NULL DEFAULT 'not_started' CHECK (status IN ('not_started', 'in_progress', 'completed', 'waiting', 'deferred')),
    percent_complete INTEGER NOT NULL DEFAULT 0 CHECK (percent_complete BETWEEN 0 AND 100),
    importance TEXT NOT NULL DEFAULT 'normal' CHECK (importance IN ('low', 'normal', 'high')),
    completed_at TEXT,
    categories TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(categories) AND json_type(categories) = 'array'),
    ews_id TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_mail_folders (
    id INTEGER PRIMARY KEY,
    owner_id INTEGER NOT NULL REFERENCES crm_operators(id),
    parent_id INTEGER REFERENCES crm_mail_folders(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT CHECK (role IN ('inbox', 'sentitems', 'drafts', 'deleteditems', 'junkemail', 'outbox', 'archive')),
    sync_from DATE,
    sync_excluded BOOLEAN NOT NULL DEFAULT FALSE,
    ews_id TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_mails (
    id INTEGER PRIMARY KEY,
    owner_id INTEGER NOT NULL REFERENCES crm_operators(id),
    folder_id INTEGER NOT NULL REFERENCES crm_mail_folders(id) ON DELETE CASCADE,
    internet_message_id TEXT,
    subject TEXT,
    sender TEXT,
    recipients TEXT,
    sent_at TEXT,
    is_read BOOLEAN NOT NULL DEFAULT FALSE,
    mime BLOB,
    size INTEGER,
    ews_id TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE crm_outbox (
    id INTEGER PRIMARY KEY,
    owner_id INTEGER NOT NULL REFERENCES crm_operators(id),
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT,
    mime BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    sent_at TEXT,
    error TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE UNIQUE INDEX crm_operators_personnel_no ON crm_operators (tenant_id, personnel_no);
CREATE INDEX crm_contacts_owner ON crm_contacts (tenant_id, owner_id);
CREATE INDEX crm_appointments_owner ON crm_appointments (owner_id);
CREATE INDEX crm_tasks_owner ON crm_tasks (owner_id);
CREATE UNIQUE INDEX crm_mail_folders_role ON crm_mail_folders (owner_id, role) WHERE role IS NOT NULL;
CREATE INDEX crm_mails_folder ON crm_mails (folder_id);
CREATE INDEX crm_mails_message_id ON crm_mails (owner_id, internet_message_id);
CREATE INDEX crm_outbox_pending ON crm_outbox (owner_id) WHERE state = 'pending';

-- The change log (see the PostgreSQL schema); categories are JSON arrays here
-- (filter with json_each), timestamps ISO 8601 text in UTC.
CREATE TABLE crm_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')),
    owner_id INTEGER,
    tenant_id INTEGER,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- crm_operators: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_operators_version AFTER UPDATE ON crm_operators WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_operators SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_operators_insert AFTER INSERT ON crm_operators
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', NEW.id, 'I', NULL, NEW.tenant_id);
END;
CREATE TRIGGER crm_operators_update AFTER UPDATE ON crm_operators WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', NEW.id, 'U', NULL, NEW.tenant_id);
END;
CREATE TRIGGER crm_operators_delete AFTER DELETE ON crm_operators
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_operators', OLD.id, 'D', NULL, OLD.tenant_id);
END;

-- crm_contacts: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_contacts_version AFTER UPDATE ON crm_contacts WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_contacts SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_contacts_insert AFTER INSERT ON crm_contacts
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_contacts_update AFTER UPDATE ON crm_contacts WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_contacts_delete AFTER DELETE ON crm_contacts
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_contacts', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);
END;

-- crm_appointments: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_appointments_version AFTER UPDATE ON crm_appointments WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_appointments SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_appointments_insert AFTER INSERT ON crm_appointments
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_appointments_update AFTER UPDATE ON crm_appointments WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_appointments_delete AFTER DELETE ON crm_appointments
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_appointments', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);
END;

-- crm_tasks: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_tasks_version AFTER UPDATE ON crm_tasks WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_tasks SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_tasks_insert AFTER INSERT ON crm_tasks
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', NEW.id, 'I', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_tasks_update AFTER UPDATE ON crm_tasks WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', NEW.id, 'U', NEW.owner_id, NEW.tenant_id);
END;
CREATE TRIGGER crm_tasks_delete AFTER DELETE ON crm_tasks
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_tasks', OLD.id, 'D', OLD.owner_id, OLD.tenant_id);
END;

-- crm_mail_folders: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_mail_folders_version AFTER UPDATE ON crm_mail_folders WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_mail_folders SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_mail_folders_insert AFTER INSERT ON crm_mail_folders
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', NEW.id, 'I', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_mail_folders_update AFTER UPDATE ON crm_mail_folders WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', NEW.id, 'U', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_mail_folders_delete AFTER DELETE ON crm_mail_folders
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mail_folders', OLD.id, 'D', OLD.owner_id, NULL);
END;

-- crm_mails: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_mails_version AFTER UPDATE ON crm_mails WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_mails SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_mails_insert AFTER INSERT ON crm_mails
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', NEW.id, 'I', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_mails_update AFTER UPDATE ON crm_mails WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', NEW.id, 'U', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_mails_delete AFTER DELETE ON crm_mails
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_mails', OLD.id, 'D', OLD.owner_id, NULL);
END;

-- crm_outbox: an update that leaves version alone bumps it (a nested update, which is the one captured).
CREATE TRIGGER crm_outbox_version AFTER UPDATE ON crm_outbox WHEN NEW.version = OLD.version
BEGIN
    UPDATE crm_outbox SET version = OLD.version + 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
CREATE TRIGGER crm_outbox_insert AFTER INSERT ON crm_outbox
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', NEW.id, 'I', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_outbox_update AFTER UPDATE ON crm_outbox WHEN NEW.version <> OLD.version
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', NEW.id, 'U', NEW.owner_id, NULL);
END;
CREATE TRIGGER crm_outbox_delete AFTER DELETE ON crm_outbox
BEGIN
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id) VALUES ('crm_outbox', OLD.id, 'D', OLD.owner_id, NULL);
END;

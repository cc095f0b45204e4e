-- The reference integration schema: the contract an ERP/CRM integrates with (docs/crm-schema.md).
-- Every synced table carries `version` (bumped on each change by a trigger) and `updated_at`;
-- deletes are real DELETEs; every insert, update and delete lands in crm_changes.

CREATE TABLE crm_tenants (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE crm_operators (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES crm_tenants(id),
    personnel_no TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_contacts (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES crm_tenants(id),
    owner_id BIGINT REFERENCES crm_operators(id),   -- NULL: shared by the tenant
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
    categories TEXT[] NOT NULL DEFAULT '{}',
    ews_id TEXT,                                      -- set by mailsync: the Exchange item id
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_appointments (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES crm_tenants(id),
    owner_id BIGINT NOT NULL REFERENCES crm_operators(id),
    subject TEXT,
    location TEXT,
    body TEXT,
    starts_at TIMESTAMPTZ NOT NULL,                          -- UTC
    ends_at TIMESTAMPTZ NOT NULL,                            -- UTC
    all_day BOOLEAN NOT NULL DEFAULT FALSE,
    time_zone TEXT NOT NULL DEFAULT 'UTC',            -- IANA name
    recurrence TEXT,                                  -- RFC 5545 RRULE, NULL for single appointments
    reminder_minutes INTEGER,
    show_as TEXT NOT NULL DEFAULT 'busy' CHECK (show_as IN ('free', 'tentative', 'busy', 'oof', 'working_elsewhere')),
    categories TEXT[] NOT NULL DEFAULT '{}',
    uid TEXT,                                         -- iCalendar UID, links copies of one appointment
    ews_id TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_tasks (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES crm_tenants(id),
    owner_id BIGINT NOT NULL REFERENCES crm_operators(id),
    subject TEXT,
    body TEXT,
    start_date DATE,
    due_date DATE,
    status TEXT NOT NULL DEFAULT 'not_started' CHECK (status IN ('not_started', 'in_progress', 'completed', 'waiting', 'deferred')),
    percent_complete INTEGER NOT NULL DEFAULT 0 CHECK (percent_complete BETWEEN 0 AND 100),
    importance TEXT NOT NULL DEFAULT 'normal' CHECK (importance IN ('low', 'normal', 'high')),
    completed_at TIMESTAMPTZ,
    categories TEXT[] NOT NULL DEFAULT '{}',
    ews_id TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_mail_folders (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES crm_operators(id),
    parent_id BIGINT REFERENCES crm_mail_folders(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT CHECK (role IN ('inbox', 'sentitems', 'drafts', 'deleteditems', 'junkemail', 'outbox', 'archive')),
    sync_from DATE,
    sync_excluded BOOLEAN NOT NULL DEFAULT FALSE,
    ews_id TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_mails (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES crm_operators(id),
    folder_id BIGINT NOT NULL REFERENCES crm_mail_folders(id) ON DELETE CASCADE,
    internet_message_id TEXT,
    subject TEXT,
    sender TEXT,
    recipients TEXT,
    sent_at TIMESTAMPTZ,
    is_read BOOLEAN NOT NULL DEFAULT FALSE,
    mime BYTEA,
    size BIGINT,
    ews_id TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE crm_outbox (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES crm_operators(id),
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT,
    mime BYTEA NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    sent_at TIMESTAMPTZ,
    error TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX crm_operators_personnel_no ON crm_operators (tenant_id, personnel_no);
CREATE INDEX crm_contacts_owner ON crm_contacts (tenant_id, owner_id);
CREATE INDEX crm_contacts_categories ON crm_contacts USING GIN (categories);
CREATE INDEX crm_appointments_owner ON crm_appointments (owner_id);
CREATE INDEX crm_appointments_categories ON crm_appointments USING GIN (categories);
CREATE INDEX crm_tasks_owner ON crm_tasks (owner_id);
CREATE INDEX crm_tasks_categories ON crm_tasks USING GIN (categories);
CREATE UNIQUE INDEX crm_mail_folders_role ON crm_mail_folders (owner_id, role) WHERE role IS NOT NULL;
CREATE INDEX crm_mails_folder ON crm_mails (folder_id);
CREATE INDEX crm_mails_message_id ON crm_mails (owner_id, internet_message_id);
CREATE INDEX crm_outbox_pending ON crm_outbox (owner_id) WHERE state = 'pending';

-- The change log. owner_id and tenant_id are copied from the row so a delete can be routed
-- to its mailbox after the row is gone. txid is the writing transaction: sequence numbers
-- are handed out before commit, so readers take only changes of transactions older than the
-- oldest one still running, in (txid, seq) order; a plain seq cursor would skip a change
-- that commits late with a lower number.
CREATE TABLE crm_changes (
    seq BIGSERIAL PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    table_name TEXT NOT NULL,
    row_id BIGINT NOT NULL,
    op CHAR(1) NOT NULL CHECK (op IN ('I', 'U', 'D')),
    owner_id BIGINT,
    tenant_id BIGINT,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX crm_changes_order ON crm_changes (txid, seq);

CREATE FUNCTION crm_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Records the change and tells listeners (LISTEN crm_changes) its sequence number, so
-- propagation needs no polling. NOTIFY is delivered at commit, in commit order.
CREATE FUNCTION crm_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    s BIGINT;
BEGIN
    IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id)
    VALUES (TG_TABLE_NAME, (r->>'id')::bigint, left(TG_OP, 1), (r->>'owner_id')::bigint, (r->>'tenant_id')::bigint)
    RETURNING seq INTO s;
    PERFORM pg_notify('crm_changes', s::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER crm_operators_version BEFORE UPDATE ON crm_operators FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_operators_capture AFTER INSERT OR UPDATE OR DELETE ON crm_operators FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_contacts_version BEFORE UPDATE ON crm_contacts FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_contacts_capture AFTER INSERT OR UPDATE OR DELETE ON crm_contacts FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_appointments_version BEFORE UPDATE ON crm_appointments FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_appointments_capture AFTER INSERT OR UPDATE OR DELETE ON crm_appointments FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_tasks_version BEFORE UPDATE ON crm_tasks FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_tasks_capture AFTER INSERT OR UPDATE OR DELETE ON crm_tasks FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_mail_folders_version BEFORE UPDATE ON crm_mail_folders FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_mail_folders_capture AFTER INSERT OR UPDATE OR DELETE ON crm_mail_folders FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_mails_version BEFORE UPDATE ON crm_mails FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_mails_capture AFTER INSERT OR UPDATE OR DELETE ON crm_mails FOR EACH ROW EXECUTE FUNCTION crm_capture();
CREATE TRIGGER crm_outbox_version BEFORE UPDATE ON crm_outbox FOR EACH ROW EXECUTE FUNCTION crm_bump_version();
CREATE TRIGGER crm_outbox_capture AFTER INSERT OR UPDATE OR DELETE ON crm_outbox FOR EACH ROW EXECUTE FUNCTION crm_capture();

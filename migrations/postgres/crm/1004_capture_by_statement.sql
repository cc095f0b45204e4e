-- Change capture by statement instead of by row: one trigger call per INSERT, UPDATE or DELETE
-- statement writes a crm_changes entry for every row it touched, read from the statement's
-- transition table. The log holds exactly what the row triggers wrote (one entry per row,
-- same columns, same origin), but a statement writing 100 rows no longer runs PL/pgSQL and
-- to_jsonb 100 times: the row trigger was about half of the cost of a bulk update (bench/README,
-- issue 14). Cascaded deletes (mail folders, their mails) run statements of their own, so
-- their rows are logged as before. Transition tables allow one event per trigger, hence three.
CREATE FUNCTION crm_capture_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mark TEXT := NULLIF(current_setting('mailsync.origin', true), '');
    kind CHAR(1) := left(TG_OP, 1);
BEGIN
    -- TG_ARGV[0] names the row's routing columns: 'owner_tenant', 'owner' or 'tenant'.
    -- Each branch is planned only for the tables that take it.
    IF TG_OP = 'DELETE' THEN
        IF TG_ARGV[0] = 'owner_tenant' THEN
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, r.owner_id, r.tenant_id, mark FROM old_rows r ORDER BY r.id;
        ELSIF TG_ARGV[0] = 'owner' THEN
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, r.owner_id, NULL, mark FROM old_rows r ORDER BY r.id;
        ELSE
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, NULL, r.tenant_id, mark FROM old_rows r ORDER BY r.id;
        END IF;
    ELSE
        IF TG_ARGV[0] = 'owner_tenant' THEN
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, r.owner_id, r.tenant_id, mark FROM new_rows r ORDER BY r.id;
        ELSIF TG_ARGV[0] = 'owner' THEN
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, r.owner_id, NULL, mark FROM new_rows r ORDER BY r.id;
        ELSE
            INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
            SELECT TG_TABLE_NAME, r.id, kind, NULL, r.tenant_id, mark FROM new_rows r ORDER BY r.id;
        END IF;
    END IF;
    -- A statement that touched no row logs nothing and wakes nobody.
    IF FOUND THEN
        PERFORM pg_notify('crm_changes', '');
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t RECORD;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('crm_operators', 'tenant'),
        ('crm_contacts', 'owner_tenant'),
        ('crm_appointments', 'owner_tenant'),
        ('crm_tasks', 'owner_tenant'),
        ('crm_mail_folders', 'owner'),
        ('crm_mails', 'owner'),
        ('crm_outbox', 'owner')) AS v(name, routing)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t.name || '_capture', t.name);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION crm_capture_rows(%L)',
                       t.name || '_capture_insert', t.name, t.routing);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION crm_capture_rows(%L)',
                       t.name || '_capture_update', t.name, t.routing);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION crm_capture_rows(%L)',
                       t.name || '_capture_delete', t.name, t.routing);
    END LOOP;
END
$$;

-- The row trigger's function stays for integrations that attached it to tables of their own.

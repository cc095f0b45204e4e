-- Change capture by statement instead of by row: one trigger call per INSERT, UPDATE or DELETE
-- statement writes a crm_changes entry for every row it touched, read from the statement's
-- transition table. The log holds exactly what the row triggers wrote (one entry per row,
-- same columns, same origin), but a statement writing 100 rows no longer runs PL/pgSQL and
-- to_jsonb 100 times: the row trigger was about half of the cost of a bulk update (bench/README,
-- issue 14). Cascaded deletes (mail folders, their mails) run statements of their own, so
-- their rows are logged as before. Transition tables allow one event per trigger, hence three.
-- The set of entries a transaction logs is the same; their order within the transaction is
-- not (rows of one statement are logged by id, after the writes their own triggers made).
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

-- Each reference trigger crm_<table>_capture is replaced by crm_<table>_capture_insert, _update
-- and _delete, enabled as it was (an integration that disabled capture keeps it disabled).
-- Left as it is, with a notice: a table without the reference trigger (an integration's own
-- capture: replacing it would log every change twice) and a table whose trigger fires on
-- replicas (ENABLE ALWAYS / REPLICA: logical replication's apply runs row triggers only, so a
-- subscriber must keep capturing by row).
DO $$
DECLARE
    t RECORD;
    state "char";
    name TEXT;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('crm_operators', 'tenant'),
        ('crm_contacts', 'owner_tenant'),
        ('crm_appointments', 'owner_tenant'),
        ('crm_tasks', 'owner_tenant'),
        ('crm_mail_folders', 'owner'),
        ('crm_mails', 'owner'),
        ('crm_outbox', 'owner')) AS v(tab, routing)
    LOOP
        SELECT tg.tgenabled INTO state FROM pg_trigger tg
        WHERE tg.tgrelid = to_regclass(t.tab) AND tg.tgname = t.tab || '_capture';
        IF NOT FOUND THEN
            RAISE NOTICE '%: no trigger %_capture (a capture of its own?); left as it is', t.tab, t.tab;
            CONTINUE;
        END IF;
        IF state IN ('A', 'R') THEN
            RAISE NOTICE '%: %_capture fires on replicas; kept as a row trigger', t.tab, t.tab;
            CONTINUE;
        END IF;
        EXECUTE format('DROP TRIGGER %I ON %I', t.tab || '_capture', t.tab);
        FOREACH name IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s TABLE AS %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION crm_capture_rows(%L)',
                           t.tab || '_capture_' || name, upper(name), t.tab,
                           CASE name WHEN 'delete' THEN 'OLD' ELSE 'NEW' END,
                           CASE name WHEN 'delete' THEN 'old_rows' ELSE 'new_rows' END,
                           t.routing);
            IF state = 'D' THEN
                EXECUTE format('ALTER TABLE %I DISABLE TRIGGER %I', t.tab, t.tab || '_capture_' || name);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- The row trigger's function stays: tables left as they were above still use it.

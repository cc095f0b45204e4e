-- The origin of a change: the mailbox whose sync step wrote it (NULL for every other writer).
-- mailsync sets the transaction-local setting mailsync.origin in its write transactions; the
-- change feed does not queue a change back to the mailbox that made it (src/cluster/fence.rs).
-- The notification's payload is now empty: PostgreSQL folds identical notifications of one
-- transaction into one, so an import of 5,000 rows wakes listeners once, not 5,000 times
-- (a reader reads the log after every wake-up anyway; the sequence number was never used).
ALTER TABLE crm_changes ADD COLUMN origin TEXT;

CREATE OR REPLACE FUNCTION crm_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
    INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin)
    VALUES (TG_TABLE_NAME, (r->>'id')::bigint, left(TG_OP, 1), (r->>'owner_id')::bigint, (r->>'tenant_id')::bigint,
            NULLIF(current_setting('mailsync.origin', true), ''));
    PERFORM pg_notify('crm_changes', '');
    RETURN NULL;
END
$$;

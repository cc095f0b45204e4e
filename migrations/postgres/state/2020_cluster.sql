-- Several instances on one state store (src/cluster, docs/ARCHITECTURE.md "Cluster").
--
-- ms_instance: one row per running instance (id unique per process start), kept fresh by
-- its membership loop. ms_lease: who owns each mailbox (and '@crm-feed', the change feed's
-- reader); a free or released lease has owner '' or an expires_at in the past. Rows are
-- never deleted while their mailbox is configured, so epoch only grows.
CREATE TABLE ms_instance (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    admin_url TEXT NOT NULL DEFAULT '',
    heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
    started TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopping BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE ms_lease (
    mailbox TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ms_lease_owner ON ms_lease (owner);

-- Fencing. An instance's connections carry its id in the session setting mailsync.instance
-- (unset outside a cluster: nothing is checked). A write for a mailbox whose lease row names
-- another owner is refused with SQLSTATE MSF01, in the writing transaction. The lease row is
-- locked FOR SHARE, so a takeover (an UPDATE of the row) waits for writes in flight and every
-- write after it sees the new owner.
CREATE FUNCTION ms_fence_check(key TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    me TEXT := current_setting('mailsync.instance', true);
    holder TEXT;
BEGIN
    IF me IS NULL OR me = '' THEN
        RETURN;
    END IF;
    SELECT owner INTO holder FROM ms_lease WHERE mailbox = key FOR SHARE;
    IF FOUND AND holder <> me THEN
        RAISE EXCEPTION 'mailsync instance % does not hold the lease of %', me, key
            USING ERRCODE = 'MSF01';
    END IF;
END;
$$;

CREATE FUNCTION ms_fence_row() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM ms_fence_check(OLD.mailbox);
        RETURN OLD;
    END IF;
    PERFORM ms_fence_check(NEW.mailbox);
    RETURN NEW;
END;
$$;

CREATE FUNCTION ms_fence_cursor() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ms_fence_check('@' || NEW.name);
    RETURN NEW;
END;
$$;

CREATE TRIGGER ms_fence BEFORE INSERT OR UPDATE OR DELETE ON ms_folder_state
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT OR UPDATE OR DELETE ON ms_item_map
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT ON ms_failures
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT ON ms_conflicts
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT ON ms_held
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT ON ms_ambiguous
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE DELETE ON ms_pending
    FOR EACH ROW EXECUTE FUNCTION ms_fence_row();
CREATE TRIGGER ms_fence BEFORE INSERT OR UPDATE ON ms_cursor
    FOR EACH ROW EXECUTE FUNCTION ms_fence_cursor();

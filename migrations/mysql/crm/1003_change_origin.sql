-- The origin of a change: the mailbox whose sync step wrote it (NULL for every other writer).
-- mailsync sets the session variable @mailsync_origin at the start of each of its write
-- transactions and clears it at their end (src/cluster/fence.rs); the capture triggers copy it.
-- The change feed does not queue a change back to the mailbox that made it.
ALTER TABLE crm_changes ADD COLUMN origin VARCHAR(320) NULL;

DROP TRIGGER crm_operators_insert;
CREATE TRIGGER crm_operators_insert AFTER INSERT ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_operators', NEW.id, 'I', NULL, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_operators_update;
CREATE TRIGGER crm_operators_update AFTER UPDATE ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_operators', NEW.id, 'U', NULL, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_operators_delete;
CREATE TRIGGER crm_operators_delete AFTER DELETE ON crm_operators FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_operators', OLD.id, 'D', NULL, OLD.tenant_id, @mailsync_origin);
DROP TRIGGER crm_contacts_insert;
CREATE TRIGGER crm_contacts_insert AFTER INSERT ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_contacts', NEW.id, 'I', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_contacts_update;
CREATE TRIGGER crm_contacts_update AFTER UPDATE ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_contacts', NEW.id, 'U', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_contacts_delete;
CREATE TRIGGER crm_contacts_delete AFTER DELETE ON crm_contacts FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_contacts', OLD.id, 'D', OLD.owner_id, OLD.tenant_id, @mailsync_origin);
DROP TRIGGER crm_appointments_insert;
CREATE TRIGGER crm_appointments_insert AFTER INSERT ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_appointments', NEW.id, 'I', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_appointments_update;
CREATE TRIGGER crm_appointments_update AFTER UPDATE ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_appointments', NEW.id, 'U', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_appointments_delete;
CREATE TRIGGER crm_appointments_delete AFTER DELETE ON crm_appointments FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_appointments', OLD.id, 'D', OLD.owner_id, OLD.tenant_id, @mailsync_origin);
DROP TRIGGER crm_tasks_insert;
CREATE TRIGGER crm_tasks_insert AFTER INSERT ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_tasks', NEW.id, 'I', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_tasks_update;
CREATE TRIGGER crm_tasks_update AFTER UPDATE ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_tasks', NEW.id, 'U', NEW.owner_id, NEW.tenant_id, @mailsync_origin);
DROP TRIGGER crm_tasks_delete;
CREATE TRIGGER crm_tasks_delete AFTER DELETE ON crm_tasks FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_tasks', OLD.id, 'D', OLD.owner_id, OLD.tenant_id, @mailsync_origin);
DROP TRIGGER crm_mail_folders_insert;
CREATE TRIGGER crm_mail_folders_insert AFTER INSERT ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mail_folders', NEW.id, 'I', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_mail_folders_update;
CREATE TRIGGER crm_mail_folders_update AFTER UPDATE ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mail_folders', NEW.id, 'U', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_mail_folders_delete;
CREATE TRIGGER crm_mail_folders_delete AFTER DELETE ON crm_mail_folders FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mail_folders', OLD.id, 'D', OLD.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_mails_insert;
CREATE TRIGGER crm_mails_insert AFTER INSERT ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mails', NEW.id, 'I', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_mails_update;
CREATE TRIGGER crm_mails_update AFTER UPDATE ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mails', NEW.id, 'U', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_mails_delete;
CREATE TRIGGER crm_mails_delete AFTER DELETE ON crm_mails FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_mails', OLD.id, 'D', OLD.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_outbox_insert;
CREATE TRIGGER crm_outbox_insert AFTER INSERT ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_outbox', NEW.id, 'I', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_outbox_update;
CREATE TRIGGER crm_outbox_update AFTER UPDATE ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_outbox', NEW.id, 'U', NEW.owner_id, NULL, @mailsync_origin);
DROP TRIGGER crm_outbox_delete;
CREATE TRIGGER crm_outbox_delete AFTER DELETE ON crm_outbox FOR EACH ROW INSERT INTO crm_changes (table_name, row_id, op, owner_id, tenant_id, origin) VALUES ('crm_outbox', OLD.id, 'D', OLD.owner_id, NULL, @mailsync_origin);

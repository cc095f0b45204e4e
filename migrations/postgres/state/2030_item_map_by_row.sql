-- The change feed asks, per batch of up to 1,000 changed CRM rows, which mailboxes map each
-- (so a row that moved or was deleted leaves the mailbox it was in). Without this index that
-- is a scan of every mapping per 500 rows: at 200,000 mappings about 8 s a query, and the
-- feed fell minutes behind after a large import. crm_id leads: the rows asked for are the
-- selective part (led by crm_table, a table without statistics yet — right after an import —
-- was planned as a scan of every mapping of the table).
CREATE INDEX ms_item_map_row ON ms_item_map (crm_id, crm_table);

-- Operators of the simulated mailboxes for `docker compose up` (idempotent).
INSERT INTO crm_tenants (id, name) VALUES (1, 'Demo GmbH') ON CONFLICT (id) DO NOTHING;
INSERT INTO crm_operators (id, tenant_id, personnel_no, display_name, email) VALUES
    (1, 1, '1001', 'Operator 1', 'user1@example.com'),
    (2, 1, '1002', 'Operator 2', 'user2@example.com'),
    (3, 1, '1003', 'Operator 3', 'user3@example.com')
ON CONFLICT (id) DO NOTHING;

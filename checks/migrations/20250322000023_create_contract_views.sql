-- Migration 4: Create Contract Views
-- contracts_with_details, contract_approval_records_with_details.
-- Names from joins only, security_invoker (see migration 2); one row per base row.

CREATE VIEW contracts_with_details WITH (security_invoker = true) AS
SELECT k.id,
       k.tenant_id,
       k.customer_id,
       k.assigned_to,
       k.contract_number,
       k.title,
       k.value,
       k.status,
       k.start_date,
       k.end_date,
       k.created_at,
       c.name                          AS customer_name,
       c.email                         AS customer_email,
       u.full_name                     AS assigned_to_name,
       coalesce(a.approval_count, 0)   AS approval_count,
       coalesce(a.approved_count, 0)   AS approved_count,
       a.last_decided_at
FROM contracts k
LEFT JOIN customers c ON c.id = k.customer_id
LEFT JOIN users u     ON u.id = k.assigned_to
LEFT JOIN (
    SELECT contract_id,
           count(*) AS approval_count,
           count(*) FILTER (WHERE decision = 'approved') AS approved_count,
           max(decided_at) AS last_decided_at
    FROM contract_approval_records
    GROUP BY contract_id
) a ON a.contract_id = k.id;

CREATE VIEW contract_approval_records_with_details WITH (security_invoker = true) AS
SELECT r.id,
       r.tenant_id,
       r.contract_id,
       r.approver_id,
       r.decision,
       r.comments,
       r.decided_at,
       u.full_name        AS approver_name,
       u.email            AS approver_email,
       k.title            AS contract_title,
       k.contract_number,
       k.status           AS contract_status,
       k.customer_id,
       c.name             AS customer_name
FROM contract_approval_records r
LEFT JOIN users u     ON u.id = r.approver_id
LEFT JOIN contracts k ON k.id = r.contract_id
LEFT JOIN customers c ON c.id = k.customer_id;

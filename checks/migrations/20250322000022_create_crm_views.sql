-- Migration 3: Create CRM Views
-- customers_with_stats, tickets_with_details, ticket_comments_with_details.
-- Names from joins only, security_invoker (see migration 2); aggregates are joined as subqueries grouped
-- by the join key, so every view keeps exactly one row per base row.

CREATE VIEW customers_with_stats WITH (security_invoker = true) AS
SELECT c.id,
       c.tenant_id,
       c.name,
       c.email,
       c.phone,
       c.company_name,
       c.status,
       c.assigned_to,
       c.created_at,
       u.full_name                    AS assigned_to_name,
       coalesce(s.sale_count, 0)      AS sale_count,
       coalesce(s.sales_value, 0)     AS sales_value,
       s.last_sale_date,
       coalesce(t.ticket_count, 0)    AS ticket_count,
       coalesce(t.open_tickets, 0)    AS open_ticket_count,
       coalesce(k.contract_count, 0)  AS contract_count
FROM customers c
LEFT JOIN users u ON u.id = c.assigned_to
LEFT JOIN (
    SELECT customer_id, count(*) AS sale_count, sum(value) AS sales_value, max(sale_date) AS last_sale_date
    FROM sales
    GROUP BY customer_id
) s ON s.customer_id = c.id
LEFT JOIN (
    SELECT customer_id, count(*) AS ticket_count,
           count(*) FILTER (WHERE status IN ('open', 'in_progress')) AS open_tickets
    FROM tickets
    WHERE customer_id IS NOT NULL
    GROUP BY customer_id
) t ON t.customer_id = c.id
LEFT JOIN (
    SELECT customer_id, count(*) AS contract_count
    FROM contracts
    GROUP BY customer_id
) k ON k.customer_id = c.id;

CREATE VIEW tickets_with_details WITH (security_invoker = true) AS
SELECT t.id,
       t.tenant_id,
       t.customer_id,
       t.assigned_to,
       t.reported_by,
       t.ticket_number,
       t.title,
       t.description,
       t.status,
       t.priority,
       t.created_at,
       t.resolved_at,
       c.name                       AS customer_name,
       c.email                      AS customer_email,
       ua.full_name                 AS assigned_to_name,
       ur.full_name                 AS reported_by_name,
       coalesce(tc.comment_count, 0) AS comment_count
FROM tickets t
LEFT JOIN customers c ON c.id = t.customer_id
LEFT JOIN users ua    ON ua.id = t.assigned_to
LEFT JOIN users ur    ON ur.id = t.reported_by
LEFT JOIN (
    SELECT ticket_id, count(*) AS comment_count
    FROM ticket_comments
    GROUP BY ticket_id
) tc ON tc.ticket_id = t.id;

CREATE VIEW ticket_comments_with_details WITH (security_invoker = true) AS
SELECT tc.id,
       tc.tenant_id,
       tc.ticket_id,
       tc.author_id,
       tc.body,
       tc.is_internal,
       tc.created_at,
       u.full_name      AS author_name,
       u.email          AS author_email,
       u.role           AS author_role,
       t.ticket_number,
       t.title          AS ticket_title,
       t.status         AS ticket_status
FROM ticket_comments tc
LEFT JOIN users u   ON u.id = tc.author_id
LEFT JOIN tickets t ON t.id = tc.ticket_id;

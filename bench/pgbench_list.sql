-- The database work of one GET /v1/support/tickets?page=1&per_page=20 for a user with more than
-- 20 tickets, as the service sends it: its session opens a transaction, reads one page newest
-- first, counts (the page is full, so the total is not known from the page) and rolls back when
-- the session is returned to the pool.
-- Variables from bench/http_load.py (-D): user.
BEGIN;
SELECT id, user_id, requester_email, subject, status, priority, category, assignee_id,
    created_at, updated_at, resolved_at, closed_at, first_admin_reply_at, sla_due_at,
    sla_breached_at
  FROM tickets
  WHERE user_id = :user
  ORDER BY created_at DESC, id DESC
  LIMIT 20 OFFSET 0;
SELECT count(*) FROM tickets WHERE user_id = :user;
ROLLBACK;

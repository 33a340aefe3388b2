-- The database work of one GET /v1/support/tickets?page=1&per_page=20 as the service sends it
-- (domain/tickets.py), as bench/floor_app.py does too: one statement in autocommit, one page of the user's
-- tickets newest first, each row carrying the total as a window count (a count query runs only
-- for a page past the end).
-- Variables from bench/http_load.py (-D): user.
SELECT id, user_id, requester_email, subject, status, priority, category, assignee_id,
    created_at, updated_at, resolved_at, closed_at, first_admin_reply_at, sla_due_at,
    sla_breached_at, count(*) OVER () AS total
  FROM tickets
  WHERE user_id = :user::varchar
  ORDER BY created_at DESC, id DESC
  LIMIT 20 OFFSET 0;

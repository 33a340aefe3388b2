-- The database work of one POST /v1/support/tickets as the service sends it (domain/ticket_sql.py,
-- domain/events.py): one statement, its own transaction (autocommit, as the service sends it), whose CTEs insert the ticket and its first
-- message and whose last INSERT writes the ticket.created event from arrays (unnest), as
-- bench/floor_app.py does too. Variables from bench/http_load.py (-D): user, subject, body,
-- priority, category. Ids are 26 characters and time-ordered like the service's ULIDs: the
-- statement's start in microseconds and a random suffix (now() is fixed within a statement).
\set t random(0, 9999999999)
\set m random(0, 9999999999)
\set e random(0, 9999999999)
\set q random(0, 9999999999)
WITH new_ticket AS (INSERT INTO tickets (id, user_id, requester_email, subject, status, priority,
    category, assignee_id, created_at, updated_at, resolved_at, closed_at, first_admin_reply_at,
    sla_due_at, sla_breached_at)
  VALUES (lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:t::text, 10, '0'),
    :user, NULL, :subject, 'open', :priority, :category, NULL, now(), now(), NULL, NULL, NULL,
    NULL, NULL)),
new_message AS (INSERT INTO messages (id, ticket_id, author_id, is_admin, body, created_at)
  VALUES (lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:m::text, 10, '0'),
    lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:t::text, 10, '0'),
    :user, false, :body, now())),
new_clocks AS (INSERT INTO sla_clocks (ticket_id, target, state, generation, started_at,
    allowed_s, due_at, warn_at, policy)
  SELECT lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:t::text, 10, '0'),
    c.target, c.state, c.generation, c.started_at, c.allowed_s, c.due_at, c.warn_at, c.policy
  FROM unnest(CAST('{}' AS varchar[]), CAST('{}' AS varchar[]), CAST('{}' AS integer[]),
    CAST('{}' AS timestamptz[]), CAST('{}' AS double precision[]), CAST('{}' AS timestamptz[]),
    CAST('{}' AS timestamptz[]), CAST('{}' AS varchar[]))
    AS c (target, state, generation, started_at, allowed_s, due_at, warn_at, policy))
INSERT INTO ticket_events (id, ticket_id, type, actor_id, actor_is_admin, payload, request_id,
    created_at, publish_count)
SELECT e.id, e.ticket_id, e.type, e.actor_id, e.actor_is_admin, e.payload,
    lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:q::text, 10, '0'),
    e.created_at, 0
FROM unnest(
    CAST(ARRAY[lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:e::text, 10, '0')] AS varchar[]),
    CAST(ARRAY[lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:t::text, 10, '0')] AS varchar[]),
    CAST(ARRAY['ticket.created'] AS varchar[]), CAST(ARRAY[:user] AS varchar[]),
    CAST(ARRAY[false] AS boolean[]),
    CAST(ARRAY[jsonb_build_object('message_id',
      lpad((extract(epoch FROM now()) * 1000000)::bigint::text, 16, '0') || lpad(:m::text, 10, '0'),
      'priority', :priority::text)] AS jsonb[]),
    CAST(ARRAY[now()] AS timestamptz[])
) AS e (id, ticket_id, type, actor_id, actor_is_admin, payload, created_at);

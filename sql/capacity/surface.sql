-- capacity surface: the typed reducer entry point, row-level security, metrics views and
-- privileges; loaded after every Rust function it names (its requires in src/capacity/mod.rs).

-- Capacity: the typed reducer entry point, row-level security, metrics views, privileges.

CREATE FUNCTION capacity.apply_event(request_id text, event capacity.cr_event, payload jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT capacity.apply_event_by_name(request_id, event::text, payload) $$;
COMMENT ON FUNCTION capacity.apply_event(text, capacity.cr_event, jsonb) IS
  'The reducer entry point for trusted sessions (42501 otherwise): apply one event to a request. '
  'Users call capacity.record_capacity_event, which adds per-actor permissions and idempotency.';

-- Who may read a request: its requester, its commercial owner, members of its infra owner
-- group, capacity admins and trusted sessions.
-- SECURITY DEFINER: the capacity.admins setting is not readable by callers; the answer is
-- about the caller only.
CREATE FUNCTION capacity.is_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((flowgate.current_actor_info() ->> 'trusted')::boolean, false)
        OR flowgate.get_setting('capacity.admins') ? flowgate.current_actor()
$$;
COMMENT ON FUNCTION capacity.is_admin() IS 'Whether the caller is a capacity admin (setting capacity.admins) or a trusted session.';

-- The caller's infra groups. SECURITY DEFINER: group membership itself is not public.
CREATE FUNCTION capacity.my_groups() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(array_agg(group_name), '{}') FROM capacity.group_members WHERE user_id = flowgate.current_actor() $$;
COMMENT ON FUNCTION capacity.my_groups() IS 'The infra owner groups the calling actor belongs to.';

CREATE POLICY parties_read ON capacity.capacity_requests FOR SELECT USING (
        requester_user_id = (SELECT flowgate.current_actor())
     OR commercial_owner_user_id = (SELECT flowgate.current_actor())
     OR infra_owner_group = ANY ((SELECT capacity.my_groups())::text[])
     OR (SELECT capacity.is_admin()));
CREATE POLICY parties_read ON capacity.capacity_request_events FOR SELECT USING (
        capacity_request_id IN (SELECT r.id FROM capacity.capacity_requests r));
CREATE POLICY parties_read ON capacity.capacity_request_tasks FOR SELECT USING (
        assigned_to = (SELECT flowgate.current_actor())
     OR capacity_request_id IN (SELECT r.id FROM capacity.capacity_requests r));

-- A Slack id linked to its person's actor (flowgate.request_identity_link redeemed from Slack,
-- or a trusted session's flowgate.link_identity) is that person: requests recorded with the
-- Slack id as requester or commercial owner (made from Slack before the link) name the actor
-- from then on, for permissions and for reading alike. A requester cannot pass their own
-- technical review by linking, and unlinking later gives the Slack id nothing back.
CREATE FUNCTION capacity.adopt_linked_parties() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.provider = 'slack' THEN
        UPDATE capacity.capacity_requests SET requester_user_id = NEW.actor_id WHERE requester_user_id = NEW.external_id;
        UPDATE capacity.capacity_requests SET commercial_owner_user_id = NEW.actor_id WHERE commercial_owner_user_id = NEW.external_id;
        UPDATE capacity.capacity_request_tasks SET assigned_to = NEW.actor_id WHERE assigned_to = NEW.external_id AND status = 'open';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION capacity.adopt_linked_parties() FROM PUBLIC;
COMMENT ON FUNCTION capacity.adopt_linked_parties() IS
  'Trigger: a Slack id linked to an actor makes the requests naming that Slack id as requester or commercial owner, and their open tasks assigned to it, name the actor.';
CREATE TRIGGER adopt_linked_parties AFTER INSERT OR UPDATE OF actor_id ON flowgate.identity_links
    FOR EACH ROW EXECUTE FUNCTION capacity.adopt_linked_parties();

-- Metrics. security_invoker: every reader sees only the requests RLS shows them.
CREATE VIEW capacity.v_time_in_state WITH (security_invoker = true) AS
SELECT e.capacity_request_id AS request_id,
       e.to_state AS state,
       e.created_at AS entered_at,
       lead(e.created_at) OVER w AS left_at,
       -- Still there: time so far; terminal states have no duration.
       CASE WHEN lead(e.created_at) OVER w IS NOT NULL THEN lead(e.created_at) OVER w - e.created_at
            WHEN e.to_state IN ('ACTIVATED', 'CANCELLED', 'FAILED') THEN NULL
            ELSE now() - e.created_at END AS time_in_state
  FROM capacity.capacity_request_events e
 WHERE e.from_state IS DISTINCT FROM e.to_state
WINDOW w AS (PARTITION BY e.capacity_request_id ORDER BY e.seq);
COMMENT ON VIEW capacity.v_time_in_state IS
  'How long each request spent in each state (left_at NULL: still there; time_in_state NULL for ACTIVATED, CANCELLED, FAILED).';

CREATE VIEW capacity.v_approval_latency WITH (security_invoker = true) AS
SELECT r.id AS request_id,
       r.state,
       r.created_at AS submitted_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') AS commercial_approved_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED') AS technical_approved_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'CUSTOMER_CONFIRMED') AS customer_confirmed_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') - r.created_at AS commercial_approval_latency,
       min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED')
         - min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') AS technical_review_latency,
       min(e.created_at) FILTER (WHERE e.event_type = 'CUSTOMER_CONFIRMED')
         - min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED') AS customer_confirmation_latency
  FROM capacity.capacity_requests r
  JOIN capacity.capacity_request_events e ON e.capacity_request_id = r.id
 GROUP BY r.id, r.state, r.created_at;
COMMENT ON VIEW capacity.v_approval_latency IS 'Time from submission to each approval gate, per request.';

CREATE VIEW capacity.v_metrics WITH (security_invoker = true) AS
SELECT count(*) AS requests,
       count(*) FILTER (WHERE EXISTS (SELECT FROM capacity.capacity_request_events e
                                       WHERE e.capacity_request_id = r.id AND e.to_state = 'EXPIRED')) AS expired_count,
       count(*) FILTER (WHERE r.state = 'CANCELLED' AND EXISTS (SELECT FROM capacity.capacity_request_events e
                                       WHERE e.capacity_request_id = r.id AND e.to_state = 'PROVISIONING_IN_PROGRESS'))
           AS cancelled_after_procurement_count,
       count(*) FILTER (WHERE NOT r.state IN ('ACTIVATED', 'CANCELLED', 'EXPIRED', 'FAILED')) AS open_requests,
       count(*) FILTER (WHERE r.state = 'ACTIVATED') AS activated_count
  FROM capacity.capacity_requests r;
COMMENT ON VIEW capacity.v_metrics IS 'Expired count, cancelled-after-procurement count and totals over the requests the reader can see.';
GRANT SELECT ON capacity.v_time_in_state, capacity.v_approval_latency, capacity.v_metrics TO PUBLIC;

-- Timers are for the scheduler (the extension owner), not for every caller.
REVOKE EXECUTE ON FUNCTION capacity.run_capacity_request_timers(timestamptz) FROM PUBLIC;


-- A PL/pgSQL implementation of the Capacity Request reducer, for benchmarking only (not part of
-- the extension). It does the same work as capacity.record_capacity_event: look up the parties,
-- decide the actor's standing (admins from settings, infra group membership), lock the row,
-- check the transition table and the permission, update the changed columns and updated_at,
-- append the event with from/to states, and answer as it does ({request, event, replayed,
-- allowed_events}; pg_test/bench/capacity.sh checks the two answers agree).
-- Its tables (schema bench_ref), and the floor's that capacity.sh times beside both (schema
-- bench_floor), are copies of capacity's (LIKE ... INCLUDING ALL: columns, defaults, identity,
-- CHECKs and indexes) with the event log's foreign key and append-only trigger, so every side
-- writes the same rows into the same shape of table.
DROP SCHEMA IF EXISTS bench_ref CASCADE;
DROP SCHEMA IF EXISTS bench_floor CASCADE;
DO $copies$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['bench_ref', 'bench_floor'] LOOP
        EXECUTE format('CREATE SCHEMA %I', s);
        EXECUTE format('CREATE TABLE %I.capacity_requests (LIKE capacity.capacity_requests INCLUDING ALL)', s);
        EXECUTE format('CREATE TABLE %I.capacity_request_events (LIKE capacity.capacity_request_events INCLUDING ALL)', s);
        EXECUTE format('ALTER TABLE %1$I.capacity_request_events ADD FOREIGN KEY (capacity_request_id) REFERENCES %1$I.capacity_requests (id)', s);
        PERFORM flowgate.make_append_only(format('%I.capacity_request_events', s));
    END LOOP;
END
$copies$;

CREATE FUNCTION bench_ref.next_state(s capacity.cr_state, e capacity.cr_event) RETURNS capacity.cr_state
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s = 'SUBMITTED' AND e = 'REQUEST_SUBMITTED' THEN 'COMMERCIAL_APPROVAL_REQUIRED'
        WHEN s = 'COMMERCIAL_APPROVAL_REQUIRED' AND e = 'COMMERCIAL_APPROVED' THEN 'TECHNICAL_REVIEW_REQUIRED'
        WHEN s = 'COMMERCIAL_APPROVAL_REQUIRED' AND e = 'COMMERCIAL_REJECTED' THEN 'CANCELLED'
        WHEN s = 'TECHNICAL_REVIEW_REQUIRED' AND e = 'TECH_REVIEW_APPROVED' THEN 'CUSTOMER_CONFIRMATION_REQUIRED'
        WHEN s = 'TECHNICAL_REVIEW_REQUIRED' AND e = 'TECH_REVIEW_REJECTED' THEN 'CANCELLED'
        WHEN s = 'CUSTOMER_CONFIRMATION_REQUIRED' AND e = 'CUSTOMER_CONFIRMED' THEN 'PROVISIONING_IN_PROGRESS'
        WHEN s = 'CUSTOMER_CONFIRMATION_REQUIRED' AND e = 'CUSTOMER_DECLINED' THEN 'CANCELLED'
        WHEN s = 'CUSTOMER_CONFIRMATION_REQUIRED' AND e = 'CUSTOMER_CONFIRMATION_TIMEOUT' THEN 'EXPIRED'
        WHEN s = 'PROVISIONING_IN_PROGRESS' AND e = 'AWS_PROCUREMENT_STARTED' THEN 'PROVISIONING_IN_PROGRESS'
        WHEN s = 'PROVISIONING_IN_PROGRESS' AND e = 'AWS_CAPACITY_READY' THEN 'READY_FOR_CUSTOMER'
        WHEN s = 'PROVISIONING_IN_PROGRESS' AND e = 'AWS_PROCUREMENT_FAILED' THEN 'FAILED'
        WHEN s = 'READY_FOR_CUSTOMER' AND e = 'ACTIVATION_CONFIRMED' THEN 'ACTIVATED'
        WHEN e = 'CANCEL_APPROVED' AND s NOT IN ('ACTIVATED', 'CANCELLED', 'FAILED') THEN 'CANCELLED'
    END::capacity.cr_state
$$;

-- The events a state accepts, in the enum's order, as constants (the fastest form PL/pgSQL has:
-- an inlined CASE, no query); checked against next_state below, so the two cannot disagree.
CREATE FUNCTION bench_ref.allowed_events(s capacity.cr_state) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s
        WHEN 'SUBMITTED' THEN '["REQUEST_SUBMITTED", "CANCEL_APPROVED"]'
        WHEN 'COMMERCIAL_APPROVAL_REQUIRED' THEN '["COMMERCIAL_APPROVED", "COMMERCIAL_REJECTED", "CANCEL_APPROVED"]'
        WHEN 'TECHNICAL_REVIEW_REQUIRED' THEN '["TECH_REVIEW_APPROVED", "TECH_REVIEW_REJECTED", "CANCEL_APPROVED"]'
        WHEN 'CUSTOMER_CONFIRMATION_REQUIRED' THEN '["CUSTOMER_CONFIRMED", "CUSTOMER_DECLINED", "CUSTOMER_CONFIRMATION_TIMEOUT", "CANCEL_APPROVED"]'
        WHEN 'PROVISIONING_IN_PROGRESS' THEN '["AWS_PROCUREMENT_STARTED", "AWS_CAPACITY_READY", "AWS_PROCUREMENT_FAILED", "CANCEL_APPROVED"]'
        WHEN 'READY_FOR_CUSTOMER' THEN '["CANCEL_APPROVED", "ACTIVATION_CONFIRMED"]'
        WHEN 'EXPIRED' THEN '["CANCEL_APPROVED"]'
        ELSE '[]'
    END::jsonb
$$;
DO $check$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(s::text, ', ') INTO bad FROM unnest(enum_range(NULL::capacity.cr_state)) s
     WHERE bench_ref.allowed_events(s) IS DISTINCT FROM
           (SELECT coalesce(jsonb_agg(a ORDER BY a), '[]') FROM unnest(enum_range(NULL::capacity.cr_event)) a
             WHERE bench_ref.next_state(s, a) IS NOT NULL);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'bench_ref.allowed_events disagrees with bench_ref.next_state for %', bad;
    END IF;
END
$check$;

CREATE FUNCTION bench_ref.record_event(p_id text, p_event text, p_payload jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    actor text := flowgate.current_actor();
    ev capacity.cr_event := p_event::capacity.cr_event;
    r bench_ref.capacity_requests;
    to_s capacity.cr_state;
    is_admin boolean;
    in_group boolean;
    e bench_ref.capacity_request_events;
BEGIN
    SELECT * INTO r FROM bench_ref.capacity_requests WHERE id = p_id;
    IF NOT FOUND THEN RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('capacity request %L does not exist', p_id); END IF;
    is_admin := (flowgate.current_actor_info() ->> 'trusted')::boolean OR flowgate.get_setting('capacity.admins') ? actor;
    in_group := EXISTS (SELECT FROM capacity.group_members WHERE group_name = r.infra_owner_group AND user_id = actor);
    SELECT * INTO r FROM bench_ref.capacity_requests WHERE id = p_id FOR UPDATE;
    to_s := bench_ref.next_state(r.state, ev);
    IF to_s IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = format('%s is not allowed in state %s', ev, r.state);
    END IF;
    IF NOT (is_admin OR (ev IN ('AWS_PROCUREMENT_STARTED', 'AWS_CAPACITY_READY', 'AWS_PROCUREMENT_FAILED') AND in_group)) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format('permission denied: %s may not send %s', actor, ev);
    END IF;
    UPDATE bench_ref.capacity_requests
       SET state = to_s, updated_at = now(),
           procurement_started_at = CASE WHEN ev = 'AWS_PROCUREMENT_STARTED' THEN coalesce(procurement_started_at, now()) ELSE procurement_started_at END
     WHERE id = p_id RETURNING * INTO r;
    INSERT INTO bench_ref.capacity_request_events (capacity_request_id, event_type, actor_type, actor_id, payload, from_state, to_state)
    VALUES (p_id, ev, 'role', actor, p_payload, r.state, to_s) RETURNING * INTO e;
    -- The answer record_capacity_event gives: the request, the event, whether it was a replay,
    -- and the events the new state accepts (in the enum's order).
    RETURN jsonb_build_object('request', to_jsonb(r), 'event', to_jsonb(e), 'replayed', false,
        'allowed_events', bench_ref.allowed_events(to_s));
END
$$;

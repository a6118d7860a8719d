-- Capacity Requests through SQL, as PostgREST callers (SET LOCAL ROLE + request.jwt.claims).
-- The capacity workflow's corner cases, bad input with exact SQLSTATEs, RLS, timers, metrics.
BEGIN;
SELECT plan(85);

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA flowgate, capacity TO authenticated, service_role, anon;
INSERT INTO capacity.group_members VALUES ('infra', 'infra-1'), ('commercial_approvers', 'ae-1');
CREATE TEMP TABLE n_events AS SELECT 0::bigint AS n;
-- The business-day rule computed independently of flowgate: the n-th UTC calendar day after
-- t that is not a Saturday or Sunday, at t's time of day. Whatever day the suite runs on.
CREATE FUNCTION pg_temp.plus_business_days(t timestamptz, n int) RETURNS timestamptz LANGUAGE sql AS $$
    SELECT (((t AT TIME ZONE 'UTC')::date + k) + (t AT TIME ZONE 'UTC')::time) AT TIME ZONE 'UTC'
      FROM generate_series(1, 2 * n + 7) AS k
     WHERE extract(isodow FROM (t AT TIME ZONE 'UTC')::date + k) < 6
     ORDER BY k OFFSET n - 1 LIMIT 1 $$;
GRANT ALL ON n_events TO PUBLIC;

-- === Happy path ============================================================================
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 2, 'us-east-1', '{"org":"acme"}',
         needed_by_date => '2027-01-15', expected_duration_days => 90, estimated_monthly_cost_usd => 48000) -> 'request' ->> 'id' AS cr1 \gset
SELECT matches(:'cr1'::text, '^CR-[0-9]{4}-[0-9]{6}$', 'ids look like CR-<year>-<6 digits>');
SELECT is(capacity.get_capacity_request(:'cr1') -> 'request' ->> 'state', 'COMMERCIAL_APPROVAL_REQUIRED', 'a new request waits for commercial approval');
SELECT is(capacity.get_capacity_request(:'cr1') -> 'request' ->> 'requester_user_id', 'sa-1', 'the requester is the JWT subject');
SELECT is(capacity.create_capacity_request('ae-1', 'infra', '24XL', 2, 'us-east-1', '{"org":"acme"}', needed_by_date => '2027-01-15',
          expected_duration_days => 90, estimated_monthly_cost_usd => 48000) -> 'request' ->> 'id' <> :'cr1', true,
          'without a key, a second identical call is a second request');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '48XL', 2, 'us-east-1', idempotency_key => 'crm-42')$$ ||
                 $$, capacity.create_capacity_request('ae-1', 'infra', '24XL', 2, 'us-east-1', idempotency_key => 'crm-42')$$,
                 '23505', NULL, 'a key reused for a different request is a conflict');

SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr1', 'COMMERCIAL_APPROVED') -> 'request' ->> 'state', 'TECHNICAL_REVIEW_REQUIRED', 'the commercial owner approves');
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr1', 'TECH_REVIEW_APPROVED') -> 'request' ->> 'state', 'CUSTOMER_CONFIRMATION_REQUIRED', 'infra approves');
SELECT is((capacity.get_capacity_request(:'cr1') -> 'request' ->> 'customer_confirmation_deadline_at')::timestamptz,
          pg_temp.plus_business_days(now(), 5),
          'the confirmation deadline is 5 business days (Monday to Friday, UTC) after the approval, same time of day');
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr1', 'CUSTOMER_CONFIRMED') -> 'request' ->> 'state', 'PROVISIONING_IN_PROGRESS', 'the customer confirms');
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr1', 'AWS_PROCUREMENT_STARTED') -> 'request' ->> 'state', 'PROVISIONING_IN_PROGRESS', 'procurement start is recorded without a state change');
SELECT is(capacity.record_capacity_event(:'cr1', 'AWS_CAPACITY_READY') -> 'request' ->> 'state', 'READY_FOR_CUSTOMER', 'capacity is ready');
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr1', 'ACTIVATION_CONFIRMED') -> 'request' ->> 'state', 'ACTIVATED', 'activated');
SELECT is(jsonb_array_length(capacity.get_capacity_request(:'cr1') -> 'events'), 7, 'seven events in the history');
SELECT is(capacity.get_capacity_request(:'cr1') -> 'allowed_events', '[]'::jsonb, 'ACTIVATED accepts nothing');
SELECT results_eq(format($$SELECT event_type::text || ':' || actor_id FROM capacity.capacity_request_events WHERE capacity_request_id = %L ORDER BY seq$$, :'cr1'),
    ARRAY['REQUEST_SUBMITTED:sa-1', 'COMMERCIAL_APPROVED:ae-1', 'TECH_REVIEW_APPROVED:infra-1', 'CUSTOMER_CONFIRMED:sa-1',
          'AWS_PROCUREMENT_STARTED:infra-1', 'AWS_CAPACITY_READY:infra-1', 'ACTIVATION_CONFIRMED:sa-1'],
    'every decision is attributed to its actor');

-- === Bad input: exact SQLSTATE, nothing written ============================================
SELECT throws_ok($$SELECT capacity.create_capacity_request('sa-1', 'infra', '24XL', 1, 'us-east-1')$$, '22023', NULL,
    'the requester cannot be their own commercial owner');
UPDATE n_events SET n = (SELECT count(*) FROM capacity.capacity_request_events);
SELECT throws_ok($$SELECT capacity.record_capacity_event('CR-2026-999999', 'COMMERCIAL_APPROVED')$$, 'P0002', NULL, 'unknown request: P0002');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_APPROVED')$$, :'cr1'), '55000',
    'COMMERCIAL_APPROVED is not allowed in state ACTIVATED', 'event not allowed: 55000 naming the state');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'APPROVE_EVERYTHING')$$, :'cr1'), '22023', NULL, 'unknown event: 22023');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'ACTIVATION_CONFIRMED', '[1,2]')$$, :'cr1'), '22023', NULL, 'payload not an object: 22023');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 0, 'us-east-1')$$, '22023', 'invalid quantity: 0', 'quantity 0 is refused up front');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'mars')$$, '22023', NULL, 'a region must look like us-east-1');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', '[]')$$, '22023', NULL, 'customer_ref must be an object');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', '{"n": 1e400}')$$, '22023', NULL,
                 'a number beyond a 64-bit float is a bad value (22023), as documented');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', '{"account": 123456789012345678901}')$$, '22023',
                 'invalid customer_ref: the number 123456789012345678901 does not fit a 64-bit float exactly',
                 'so is one a 64-bit float would round (it would be stored as another number)');
SELECT is((SELECT count(*) FROM capacity.capacity_request_events), (SELECT n FROM n_events), 'no rejected call wrote an event');
SELECT is(capacity.create_capacity_request('ae-1', 'other-infra', '24XL', 1, 'us-east-1', '{"account": 18446744073709551615, "rate": 0.1}') #> '{request,customer_ref}',
          '{"account": 18446744073709551615, "rate": 0.1}'::jsonb, 'a 64-bit integer and a decimal a float holds are kept as sent');
SELECT throws_ok($$INSERT INTO capacity.capacity_requests (id, state, requester_user_id, commercial_owner_user_id, infra_owner_group, requested_size, quantity, region)
                   VALUES ('CR-2026-000000', 'ACTIVATED', 'x', 'x', 'x', 'x', 1, 'us-east-1')$$, '42501', NULL, 'users cannot write the tables directly');

-- === Customer goes dark =====================================================================
SELECT capacity.create_capacity_request('ae-1', 'infra', '32XL', 1, 'eu-west-1') -> 'request' ->> 'id' AS cr2 \gset
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr2', 'COMMERCIAL_APPROVED') IS NOT NULL AS approved \g /dev/null
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr2', 'TECH_REVIEW_APPROVED') IS NOT NULL AS reviewed \g /dev/null
SELECT throws_ok($$SELECT capacity.run_capacity_request_timers()$$, '42501', NULL, 'only the scheduler runs timers');
RESET ROLE;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
UPDATE capacity.capacity_requests SET customer_confirmation_deadline_at = now() - interval '1 minute' WHERE id = :'cr2';
SELECT is(capacity.run_capacity_request_timers() ->> 'expired', '1', 'the timer expires the request');
SELECT is(capacity.run_capacity_request_timers() ->> 'expired', '0', 'running it again does nothing');
SELECT is(capacity.get_capacity_request(:'cr2') -> 'request' ->> 'state', 'EXPIRED', 'EXPIRED');
SELECT is((SELECT actor_type || ':' || actor_id FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr2' AND event_type = 'CUSTOMER_CONFIRMATION_TIMEOUT'),
          'system:system', 'the timeout is recorded as the system');
SELECT is((SELECT string_agg(task_type || ':' || assigned_to || ':' || status, ',') FROM capacity.capacity_request_tasks WHERE capacity_request_id = :'cr2'),
          'cancellation_decision:ae-1:open', 'one cancellation decision, owned by the commercial owner');
SELECT is((SELECT due_at FROM capacity.capacity_request_tasks WHERE capacity_request_id = :'cr2'), pg_temp.plus_business_days(now(), 2),
          'due two business days after the expiry');
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED')$$, :'cr2'), '22023', NULL, 'a cancellation needs a reason');
SELECT is(capacity.record_capacity_event(:'cr2', 'CANCEL_APPROVED', '{"reason": "customer unresponsive"}') -> 'request' ->> 'state', 'CANCELLED',
          'the commercial owner cancels the expired request');
SELECT is((SELECT status FROM capacity.capacity_request_tasks WHERE capacity_request_id = :'cr2'), 'done', 'the decision task is closed');

-- === AE withdraws after procurement =========================================================
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '48XL', 4, 'us-west-2') -> 'request' ->> 'id' AS cr3 \gset
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr3', 'COMMERCIAL_APPROVED') IS NOT NULL AS a \g /dev/null
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr3', 'TECH_REVIEW_APPROVED') IS NOT NULL AS b \g /dev/null
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr3', 'CUSTOMER_CONFIRMED') IS NOT NULL AS c \g /dev/null
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.record_capacity_event(:'cr3', 'AWS_PROCUREMENT_STARTED') IS NOT NULL AS d \g /dev/null
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason":"infra wants out"}')$$, :'cr3'), '42501',
    NULL, 'infra cannot cancel: the decision belongs to the commercial owner');
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason":"AE withdrew"}')$$, :'cr3'), '42501',
    NULL, 'nor can the requester');
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr3', 'CANCEL_APPROVED', '{"reason":"AE withdrew after procurement"}') -> 'request' ->> 'cancellation_authorizer_user_id',
          'ae-1', 'the commercial owner cancels; the authorizer is recorded');
SELECT is((SELECT cancelled_after_procurement_count FROM capacity.v_metrics), 1::bigint, 'metrics: one cancelled after procurement');
SELECT is((SELECT expired_count FROM capacity.v_metrics), 1::bigint, 'metrics: one expired');

-- === Multiple Slack threads, one CR ID ======================================================
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'ap-southeast-2') -> 'request' ->> 'id' AS cr4 \gset
-- The Slack bot (service role) relays button clicks from two threads that mention the same CR.
SET LOCAL ROLE service_role;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true) \g /dev/null
SELECT is(capacity.record_capacity_event(:'cr4', 'COMMERCIAL_APPROVED', '{"slack_thread":"1700000000.000100"}', 'slack:A1', on_behalf_of => 'ae-1') ->> 'replayed',
          'false', 'the first click approves');
SELECT is(capacity.record_capacity_event(:'cr4', 'COMMERCIAL_APPROVED', '{"slack_thread":"1700000000.000100"}', 'slack:A1', on_behalf_of => 'ae-1') ->> 'replayed',
          'true', 'Slack retrying the same click is a replay that writes nothing');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_APPROVED', '{"slack_thread":"1700000099.000200"}', 'slack:B7', on_behalf_of => 'ae-1')$$, :'cr4'),
    '55000', NULL, 'a click in the other thread meets the one true state');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason":"x"}', 'slack:A1', on_behalf_of => 'ae-1')$$, :'cr4'),
    '23505', NULL, 'reusing a key for another event is a conflict, not a replay');
SELECT is((SELECT count(*)::int FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr4' AND event_type = 'COMMERCIAL_APPROVED'), 1,
          'one approval in the history');
SELECT is((SELECT actor_type FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr4' AND event_type = 'COMMERCIAL_APPROVED'),
          'delegated', 'recorded as delegated by the bot');
SELECT is(capacity.apply_event(:'cr4', 'TECH_REVIEW_APPROVED') -> 'request' ->> 'state', 'CUSTOMER_CONFIRMATION_REQUIRED',
          'apply_event (the raw reducer entry point) works for a trusted session');
RESET ROLE;

-- === RLS: strangers see nothing =============================================================
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"stranger","role":"authenticated"}', true) \g /dev/null
SELECT is((SELECT count(*)::int FROM capacity.capacity_requests), 0, 'a stranger sees no requests');
SELECT throws_ok(format($$SELECT capacity.get_capacity_request(%L)$$, :'cr1'), 'P0002', NULL, 'and cannot fetch one');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason":"x"}')$$, :'cr4'), 'P0002', NULL,
    'and acting on one says it does not exist (no state leaks)');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason": 1e400}')$$, :'cr4'), 'P0002', NULL,
                 'nor learn, from a payload that would not convert, anything but that there is no such request for them');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'CANCEL_APPROVED', '{"reason":"x"}', 'sys:auto-approval')$$, :'cr4'), '22023', NULL,
    'the sys: key prefix is reserved for flowgate''s own events');
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role":"anon"}', true) \g /dev/null
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1')$$, '42501', NULL,
    'anonymous callers (no JWT sub) cannot create requests');
SET LOCAL ROLE authenticated;
SELECT throws_ok(format($$SELECT capacity.apply_event(%L, 'CANCEL_APPROVED')$$, :'cr4'), '42501', NULL,
    'apply_event is refused to untrusted sessions');
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT is((SELECT count(*)::int FROM capacity.capacity_requests), 5, 'infra group members see their group''s requests');
SELECT throws_ok('SELECT count(*) FROM capacity.group_members', '42501', NULL, 'group membership is not public');
RESET ROLE;

-- === Threshold approvals ====================================================================
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT flowgate.set_setting('capacity.auto_approve_below_usd', '10000') \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '20XL', 1, 'us-east-1', estimated_monthly_cost_usd => 5000) -> 'request' ->> 'id' AS cr5 \gset
SELECT is(capacity.get_capacity_request(:'cr5') -> 'request' ->> 'state', 'TECHNICAL_REVIEW_REQUIRED', 'a cheap request skips commercial approval');
SELECT is((SELECT actor_id || ' ' || (payload ->> 'reason') FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr5' AND event_type = 'COMMERCIAL_APPROVED'),
          'system auto-approved: estimated monthly cost 5000 USD is below the 10000 USD threshold', 'recorded as an event by system');
-- The auto-approval's own key is flowgate's (sys:): a caller's key "auto-approval" is theirs,
-- and a retry with it returns the request it made.
SELECT capacity.create_capacity_request('ae-1', 'infra', '20XL', 1, 'us-east-1', estimated_monthly_cost_usd => 5000,
       idempotency_key => 'auto-approval') -> 'request' ->> 'id' AS cr_key \gset
SELECT is(capacity.create_capacity_request('ae-1', 'infra', '20XL', 1, 'us-east-1', estimated_monthly_cost_usd => 5000,
          idempotency_key => 'auto-approval') -> 'request' ->> 'id' || ' ' || (capacity.get_capacity_request(:'cr_key') -> 'request' ->> 'state'),
          :'cr_key' || ' TECHNICAL_REVIEW_REQUIRED', 'a cheap request sent with the key auto-approval is made, auto-approved, and its retry returns it');

-- A requester's own estimate approves nothing unless the operator allows it.
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.create_capacity_request('ae-1', 'infra', '20XL', 1, 'us-east-1', estimated_monthly_cost_usd => 5000) -> 'request' ->> 'state',
          'COMMERCIAL_APPROVAL_REQUIRED', 'a user''s own low estimate does not skip commercial approval');
RESET ROLE;
SELECT flowgate.set_setting('capacity.auto_approve_requester_estimates', 'true') \g /dev/null
SET LOCAL ROLE authenticated;
SELECT is(capacity.create_capacity_request('ae-1', 'infra', '20XL', 1, 'us-east-1', estimated_monthly_cost_usd => 5000) -> 'request' ->> 'state',
          'TECHNICAL_REVIEW_REQUIRED', 'unless capacity.auto_approve_requester_estimates says it may');
-- The commercial owner must be a commercial approver: no naming one's own second account.
SELECT count(*) AS before FROM capacity.capacity_request_events \gset
SELECT throws_ok($$SELECT capacity.create_capacity_request('sa-1-second-account', 'infra', '24XL', 1, 'us-east-1')$$, '22023',
    'invalid commercial_owner_user_id: "sa-1-second-account" is not a commercial approver', 'an owner outside capacity.commercial_approvers_group is refused');
SELECT is((SELECT count(*) FROM capacity.capacity_request_events), :before::bigint, 'and nothing is written');
RESET ROLE;
SELECT flowgate.reset_setting('capacity.auto_approve_requester_estimates') \g /dev/null

-- === Claims written by a plain login role are not believed ==================================
-- A requester who can log in directly writes the commercial owner's subject into
-- request.jwt.claims and approves her own request: she stays herself, and is refused.
DO $$ BEGIN CREATE ROLE fg_sa_login LOGIN; END $$;
GRANT authenticated TO fg_sa_login;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS cr_imp \gset
RESET ROLE;
SET LOCAL SESSION AUTHORIZATION fg_sa_login;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.current_actor(), 'fg_sa_login', 'the forged claims are ignored: the actor is the login');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_APPROVED')$$, :'cr_imp'), 'P0002', NULL,
    'so the forged approval finds no request it may act on');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is(capacity.get_capacity_request(:'cr_imp') -> 'request' ->> 'state', 'COMMERCIAL_APPROVAL_REQUIRED', 'and the request still waits for its owner');

-- === Timers as of a given moment (the clock is an input; no deadline edited by hand) =========
SELECT is(capacity.run_capacity_request_timers(now() + interval '1 day') ->> 'expired', '0',
          'a day after technical approval, no 5-business-day deadline has passed');
SELECT is(capacity.run_capacity_request_timers(pg_temp.plus_business_days(now(), 5) + interval '1 second') ->> 'expired', '1',
          'as of a second after the deadline, the timer expires the waiting request');
SELECT is((SELECT state::text || ' ' || (payload ? 'as_of')::text FROM capacity.capacity_requests r
             JOIN capacity.capacity_request_events e ON e.capacity_request_id = r.id AND e.event_type = 'CUSTOMER_CONFIRMATION_TIMEOUT'
            WHERE r.id = :'cr4'), 'EXPIRED true', 'recorded with the moment it was run as of');
-- A confirmation is judged when it arrives, not when its transaction began (this file is one
-- transaction, begun long before this deadline).
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS cr_late \gset
SELECT capacity.apply_event(:'cr_late', 'COMMERCIAL_APPROVED') \g /dev/null
SELECT capacity.apply_event(:'cr_late', 'TECH_REVIEW_APPROVED') \g /dev/null
UPDATE capacity.capacity_requests SET customer_confirmation_deadline_at = clock_timestamp() + interval '200 milliseconds' WHERE id = :'cr_late';
SELECT pg_sleep(0.3) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.apply_event(%L, 'CUSTOMER_CONFIRMED')$$, :'cr_late'), '55000', NULL,
                 'a confirmation arriving after the deadline is refused, though its transaction began before it');

-- === An event's answer is the rows as stored ==================================================
-- The runner reads back only what Postgres decided; the answer is still exactly what to_jsonb
-- gives for the stored request (numeric and date columns included) and the stored event.
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 2, 'us-east-1', '{"org": "acme"}', needed_by_date => '2027-01-15',
       estimated_monthly_cost_usd => 48000) -> 'request' ->> 'id' AS stored_id \gset
CREATE TEMP TABLE answered AS
SELECT capacity.record_capacity_event(:'stored_id', 'CANCEL_APPROVED', '{"reason": "budget moved", "n": 1.50}') AS a;
SELECT is((SELECT a -> 'request' FROM answered), (SELECT to_jsonb(r) FROM capacity.capacity_requests r WHERE id = :'stored_id'),
          'the answer''s request is the row as stored');
SELECT is((SELECT a -> 'event' FROM answered),
          (SELECT to_jsonb(e) FROM capacity.capacity_request_events e WHERE capacity_request_id = :'stored_id' ORDER BY seq DESC LIMIT 1),
          'the answer''s event is the event as stored');

-- === No Rust backtrace reaches a client ======================================================
-- The test servers run with RUST_BACKTRACE=full. An error Postgres raises under flowgate's Rust
-- code (here a trigger) reaches the caller with its own message and no backtrace in DETAIL.
CREATE FUNCTION pg_temp.boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = 'P0001'; END $$;
CREATE TRIGGER tap_boom BEFORE INSERT ON capacity.capacity_request_events FOR EACH ROW EXECUTE FUNCTION pg_temp.boom();
CREATE TEMP TABLE caught (state text, message text, detail text);
DO $$
DECLARE s text; m text; d text;
BEGIN
    PERFORM capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
    INSERT INTO caught VALUES (s, m, d);
END $$;
DROP TRIGGER tap_boom ON capacity.capacity_request_events;
SELECT is((SELECT state || ' ' || message FROM caught), 'P0001 boom', 'the trigger''s error reaches the caller as raised');
SELECT is((SELECT coalesce(detail, '') FROM caught), '', 'with no Rust backtrace in its DETAIL');

-- A request made from Slack before its requester linked their Slack id: once linked, that
-- requester is the actor, and may not pass their own technical review.
RESET ROLE;
INSERT INTO capacity.capacity_requests (id, state, requester_user_id, commercial_owner_user_id, infra_owner_group, requested_size, quantity, region)
VALUES ('CR-2026-990001', 'TECHNICAL_REVIEW_REQUIRED', 'U0SELFREQ', 'ae-1', 'infra', '24XL', 1, 'us-east-1');
INSERT INTO flowgate.identity_links (provider, external_id, actor_id, linked_by) VALUES ('slack', 'U0SELFREQ', 'infra-1', 'infra-1');
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT capacity.record_capacity_event('CR-2026-990001', 'TECH_REVIEW_APPROVED')$$, '42501', NULL,
                 'a requester who linked the Slack id they requested with may not pass their own technical review');
SELECT is(capacity.get_capacity_request('CR-2026-990001') -> 'request' ->> 'requester_user_id', 'infra-1',
          'the request names the linked actor, who reads it as its requester');
RESET ROLE;
DELETE FROM flowgate.identity_links WHERE external_id = 'U0SELFREQ';
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT capacity.record_capacity_event('CR-2026-990001', 'TECH_REVIEW_APPROVED')$$, '42501', NULL,
                 'and unlinking afterwards changes nothing');
RESET ROLE;

-- Ids: the year is UTC's whatever the session's time zone, and a number past 999999 is not
-- cut to six digits (lpad truncates).
RESET ROLE;
CREATE TEMP TABLE seq_before AS SELECT last_value, is_called FROM capacity.request_number_seq;
SELECT setval('capacity.request_number_seq', 999999) \g /dev/null
SET LOCAL ROLE authenticated;
SET LOCAL TimeZone = 'Pacific/Kiritimati';
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS big1 \gset
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS big2 \gset
SELECT is(:'big1'::text, 'CR-' || to_char(now() AT TIME ZONE 'UTC', 'YYYY') || '-1000000', 'the millionth request is numbered 1000000, in UTC''s year');
SELECT is(:'big2'::text, 'CR-' || to_char(now() AT TIME ZONE 'UTC', 'YYYY') || '-1000001', 'and the next one 1000001 (no two share an id)');
SELECT is(capacity.get_capacity_request(:'big2') -> 'request' ->> 'state', 'COMMERCIAL_APPROVAL_REQUIRED', 'a seven-digit id is looked up like any other');
RESET TimeZone;
RESET ROLE;
SELECT setval('capacity.request_number_seq', last_value, is_called) FROM seq_before \g /dev/null

-- A party named by a Slack id linked to its person is stored as that person, as a link made
-- later would have rewritten it (and as a restore of that copy keeps it); a requester cannot
-- name themselves as commercial owner through their linked Slack id.
SELECT flowgate.link_identity('slack', 'U0LNKAE', 'ae-lnk') \g /dev/null
INSERT INTO capacity.group_members VALUES ('commercial_approvers', 'U0LNKAE');
SELECT is(capacity.create_capacity_request('U0LNKAE', 'infra', '24XL', 1, 'us-east-1', requester_user_id => 'sa-lnk') #>> '{request,commercial_owner_user_id}',
          'ae-lnk', 'a commercial owner named by a linked Slack id is stored as the person it is linked to');
SELECT throws_ok($$SELECT capacity.create_capacity_request('U0LNKAE', 'infra', '24XL', 1, 'us-east-1', requester_user_id => 'ae-lnk')$$,
                 '22023', NULL, 'and that person cannot be the requester too');

SELECT * FROM finish();
ROLLBACK;

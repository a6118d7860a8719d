-- What flowgate does so far, shown in psql. Nothing here is left behind: the demo runs in a
-- transaction that is rolled back, and its outbox part (which sends with no transaction open)
-- removes the delivery it made.
\pset footer off
\echo
\echo '--- installed extensions'
SELECT extname, extversion FROM pg_extension WHERE extname IN ('flowgate', 'pgmq', 'pg_cron') ORDER BY 1;

\set QUIET on
BEGIN;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;

\echo '--- who is acting? (psql session, no JWT)'
SELECT flowgate.current_actor() AS actor, flowgate.current_actor_info() AS info;

\echo '--- the same call as PostgREST makes it for a signed-in user'
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"6a1f3c2e-0d4b-4f8e-9a77-2b1c0e5d9f10","role":"authenticated"}', true) IS NOT NULL AS jwt_set;
SELECT flowgate.current_actor() AS actor, flowgate.current_actor_info() ->> 'actor_type' AS actor_type;
RESET ROLE;

\echo '--- documented settings'
SELECT key, kind, value, description FROM flowgate.setting_definitions();

\echo '--- a bad value is refused with the allowed shape (SQLSTATE 22023)'
DO $$
DECLARE hint text;
BEGIN
    PERFORM flowgate.set_setting('flowgate.trusted_roles', '"service_role"');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RAISE NOTICE 'refused with SQLSTATE %: % (hint: %)', SQLSTATE, SQLERRM, hint;
END $$;

\echo '--- an append-only event table'
CREATE TABLE public.demo_events (id bigint GENERATED ALWAYS AS IDENTITY, what text);
SELECT 'UPDATE, DELETE and TRUNCATE now raise 55000' AS guard FROM flowgate.make_append_only('public.demo_events');
INSERT INTO public.demo_events (what) VALUES ('REQUEST_SUBMITTED'), ('COMMERCIAL_APPROVED');
DO $$
BEGIN
    UPDATE public.demo_events SET what = 'forged';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'refused with SQLSTATE %: %', SQLSTATE, SQLERRM;
END $$;
SELECT * FROM public.demo_events;

\echo '--- periodic jobs registered with pg_cron'
SELECT job_name, schedule, command FROM flowgate.install_schedules();

\echo '--- a Capacity Request, as PostgREST callers: sa-1 opens it, ae-1 approves, infra-1 reviews'
GRANT USAGE ON SCHEMA capacity TO authenticated;
INSERT INTO capacity.group_members VALUES ('infra', 'infra-1'), ('commercial_approvers', 'ae-1') ON CONFLICT DO NOTHING;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) IS NOT NULL AS signed_in_as_sa1;
SELECT r -> 'request' ->> 'id' AS id, r -> 'request' ->> 'state' AS state
  FROM capacity.create_capacity_request('ae-1', 'infra', '24XL', 2, 'us-east-1', '{"org": "acme"}',
       estimated_monthly_cost_usd => 48000) r \gset demo_
SELECT :'demo_id' AS request, :'demo_state' AS state;
SELECT set_config('fg.demo_id', :'demo_id', true) IS NOT NULL AS remembered;
DO $$
DECLARE hint text;
BEGIN
    PERFORM capacity.record_capacity_event(current_setting('fg.demo_id', true), 'COMMERCIAL_APPROVED');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RAISE NOTICE 'sa-1 approving: refused with SQLSTATE %: % (hint: %)', SQLSTATE, SQLERRM, hint;
END $$;
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) IS NOT NULL AS signed_in_as_ae1;
SELECT capacity.record_capacity_event(:'demo_id', 'COMMERCIAL_APPROVED') -> 'request' ->> 'state' AS state;
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) IS NOT NULL AS signed_in_as_infra1;
SELECT capacity.record_capacity_event(:'demo_id', 'TECH_REVIEW_APPROVED') -> 'request' ->> 'customer_confirmation_deadline_at' AS confirm_by;
SELECT event_type, actor_id, from_state, to_state FROM capacity.capacity_request_events ORDER BY seq;
RESET ROLE;

\echo '--- a ticket drop: 3 seats, one per fan'
SELECT intake.create_pool('demo_drop', 3, '{"max_claims_per_user": 1}') ->> 'queue' AS queue;
SELECT u AS fan, intake.claim_resource('demo_drop', u) ->> 'status' AS result
  FROM unnest(ARRAY['fan-1', 'fan-1', 'fan-2', 'fan-3', 'fan-4']) WITH ORDINALITY AS t(u, n) ORDER BY n;
SELECT msg_id, message ->> 'user_id' AS fan, message ->> 'slot' AS seat FROM pgmq.read('intake_demo_drop', 45, 10);
ROLLBACK;

\echo '--- the outbox: a delivery to a port where nothing listens is retried with back-off'
\echo '    (CALL flowgate.run_outbox() claims, sends with no transaction open, then records)'
SELECT flowgate.enqueue_delivery('demo', 'CR-2026-000123', 'http://127.0.0.1:9/hook',
       'demo:outbox:' || gen_random_uuid(), '{"text": "New capacity request CR-2026-000123"}') AS delivery_id \gset
CALL flowgate.run_outbox();
SELECT status, attempts, last_error, next_attempt_at > now() AS backing_off FROM flowgate.deliveries WHERE id = :delivery_id;
DELETE FROM flowgate.deliveries WHERE id = :delivery_id;

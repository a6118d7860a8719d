-- The append-only guard every event table uses.
BEGIN;
SELECT plan(9);

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;

CREATE TABLE public.audit_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text NOT NULL);
SELECT lives_ok($$SELECT flowgate.make_append_only('public.audit_events')$$, 'attach the guard');
SELECT lives_ok($$SELECT flowgate.make_append_only('public.audit_events')$$, 'attaching twice is harmless');
SELECT lives_ok($$INSERT INTO public.audit_events (what) VALUES ('created'), ('approved')$$, 'INSERT is allowed');
SELECT throws_ok($$UPDATE public.audit_events SET what = 'forged'$$, '55000',
    'public.audit_events is append-only: UPDATE is not allowed', 'UPDATE raises 55000');
SELECT throws_ok($$DELETE FROM public.audit_events$$, '55000',
    'public.audit_events is append-only: DELETE is not allowed', 'DELETE raises 55000');
SELECT throws_ok($$TRUNCATE public.audit_events$$, '55000',
    'public.audit_events is append-only: TRUNCATE is not allowed', 'TRUNCATE raises 55000');
SELECT results_eq($$SELECT what FROM public.audit_events ORDER BY id$$, ARRAY['created', 'approved'],
    'the rows are untouched');
SELECT is((SELECT count(*)::int FROM pg_trigger WHERE tgrelid = 'public.audit_events'::regclass AND NOT tgisinternal), 2,
    'one row trigger and one TRUNCATE trigger');

SET LOCAL ROLE authenticated;
SELECT throws_ok($$SELECT flowgate.make_append_only('public.audit_events')$$, '42501', NULL,
    'only the owner may attach guards');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

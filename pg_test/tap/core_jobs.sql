-- Periodic jobs as flowgate runs and records them: each run's outcome, duration and error in
-- flowgate.job_status and flowgate.job_runs (pg_cron 1.4 records only "SELECT 1"), a failing job
-- undoing only its own work, and pg_cron scheduling flowgate.run_job so that its runs are
-- recorded too. (Housekeeping jobs are used here: the test server's background worker runs the
-- every-tick jobs in this database at the same time.) The outbox is a procedure that commits
-- between its steps: it is CALLed, never run through flowgate.run_job, and records its own runs;
-- that part runs in autocommit after the rolled-back block and removes what it recorded.
SELECT plan(17);
BEGIN;

SELECT is(flowgate.run_job('ops.expiry') ->> 'status', 'ok', 'a job run by hand answers ok');
SELECT is((SELECT last_runner || ' ' || last_status || ' ' || (last_duration_ms >= 0)::text FROM flowgate.job_status WHERE job = 'ops.expiry'),
          'manual ok true', 'its latest run, runner and duration are in flowgate.job_status');
SELECT is((SELECT count(*)::int FROM flowgate.job_runs WHERE job = 'ops.expiry' AND runner = 'manual' AND status = 'ok'), 1,
          'and the run is in flowgate.job_runs');
SELECT throws_ok($$SELECT flowgate.run_job('flowgate.nope')$$, '22023', NULL, 'an unknown job is 22023 (the hint lists the jobs)');
SELECT throws_ok($$SELECT flowgate.run_job('ops.expiry', 'cron')$$, '22023', NULL, 'so is an unknown runner');

-- A failing job: pruning breaks on a trigger. Its own work is undone, it is recorded, not raised.
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, status, delivered_at)
VALUES ('tap', 'jobs', 'http://127.0.0.1:1/', 'tap-jobs-old', 'delivered', now() - interval '30 days');
CREATE FUNCTION pg_temp.boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'prune is broken'; END $$;
CREATE TRIGGER tap_jobs_boom BEFORE DELETE ON flowgate.deliveries FOR EACH ROW EXECUTE FUNCTION pg_temp.boom();
SELECT is(flowgate.run_job('flowgate.prune') ->> 'error', 'P0001: prune is broken', 'a failing job is answered with its SQLSTATE and message');
SELECT is((SELECT last_status || ' ' || last_error FROM flowgate.job_status WHERE job = 'flowgate.prune'), 'error P0001: prune is broken',
          'recorded as the job''s latest outcome');
SELECT is((SELECT status || ' ' || error FROM flowgate.job_runs WHERE job = 'flowgate.prune' ORDER BY id DESC LIMIT 1), 'error P0001: prune is broken',
          'and in the history');
SELECT ok(EXISTS (SELECT FROM flowgate.deliveries WHERE idempotency_key = 'tap-jobs-old'), 'the failed job''s work was undone');
SELECT is(flowgate.run_periodic(true), (SELECT count(*)::bigint - 2 FROM flowgate.setting_definitions() WHERE key LIKE '%\_schedule'),
          'run_periodic runs every job but the outbox (a CALL of its own); the failing one does not stop the others');
-- (The trigger goes with the ROLLBACK: dropping it here would need an ACCESS EXCLUSIVE lock on
-- flowgate.deliveries, which deadlocks with the background worker's outbox.)

-- The outbox sends with no transaction open: not through flowgate.run_job, which runs a job
-- inside the caller's transaction.
SELECT throws_ok($$SELECT flowgate.run_job('flowgate.dispatch')$$, '2D000', NULL, 'run_job refuses the outbox job with 2D000');
CREATE FUNCTION pg_temp.hint_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
    EXECUTE q;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN h;
END $$;
SELECT alike(pg_temp.hint_of($$SELECT flowgate.run_job('flowgate.dispatch', 'pg_cron')$$), '%CALL flowgate.run_outbox()%',
             'and its hint says to CALL flowgate.run_outbox()');

-- pg_cron runs go through flowgate.run_job, so flowgate records them; the outbox is CALLed
-- and records its own.
SELECT is((SELECT command FROM flowgate.install_schedules() WHERE job_name = 'flowgate.dispatch'),
          'CALL flowgate.run_outbox(runner => ''pg_cron'')', 'install_schedules has pg_cron CALL flowgate.run_outbox for the outbox');
SELECT is((SELECT command FROM cron.job WHERE jobname = 'capacity.timers'), 'SELECT flowgate.run_job(''capacity.timers'', ''pg_cron'')',
          'and call flowgate.run_job for every other job');

-- Schedules are checked when they are set, not only when pg_cron is asked to use them.
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.dispatch_schedule', '"*/5 * * * * *"')$$, '22023',
    'invalid value for setting flowgate.dispatch_schedule: "*/5 * * * * *" has 6 fields, not 5',
    'a six-field schedule (pg_cron 1.4 would silently run it every 5 minutes) is refused');
SELECT lives_ok($$SELECT flowgate.set_setting('flowgate.dispatch_schedule', '"10 seconds"')$$, 'a seconds schedule is accepted');

ROLLBACK;

-- The CALL pg_cron makes is recorded as pg_cron's run of the outbox job, its summary as the result.
SELECT coalesce(max(id), 0) AS runs_before FROM flowgate.job_runs \gset
CALL flowgate.run_outbox(runner => 'pg_cron') \gset
SELECT is((SELECT string_agg(status || ' ' || (result::jsonb = :'summary'::jsonb)::text, ', ')
             FROM flowgate.job_runs WHERE job = 'flowgate.dispatch' AND runner = 'pg_cron' AND id > :runs_before),
          'ok true', 'CALL flowgate.run_outbox(runner => ''pg_cron'') records its run in flowgate.job_runs, as pg_cron''s');
DELETE FROM flowgate.job_runs WHERE job = 'flowgate.dispatch' AND runner = 'pg_cron' AND id > :runs_before;

SELECT * FROM finish();

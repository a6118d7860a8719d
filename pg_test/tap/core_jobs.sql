-- Periodic jobs as flowgate runs and records them: each run's outcome, duration and error in
-- flowgate.job_status and flowgate.job_runs (pg_cron 1.4 records only "SELECT 1"), a failing job
-- undoing only its own work, and pg_cron scheduling flowgate.run_job so that its runs are
-- recorded too. (Housekeeping jobs are used here: the test server's background worker runs the
-- every-tick jobs in this database at the same time.)
BEGIN;
SELECT plan(14);

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
SELECT is(flowgate.run_periodic(true), (SELECT count(*)::bigint - 1 FROM flowgate.setting_definitions() WHERE key LIKE '%\_schedule'),
          'run_periodic runs every job; the failing one does not stop the others');
DROP TRIGGER tap_jobs_boom ON flowgate.deliveries;

-- pg_cron runs go through flowgate.run_job, so flowgate records them.
SELECT is((SELECT command FROM flowgate.install_schedules() WHERE job_name = 'flowgate.dispatch'),
          'SELECT flowgate.run_job(''flowgate.dispatch'', ''pg_cron'')', 'install_schedules has pg_cron call flowgate.run_job');
SELECT is((SELECT command FROM cron.job WHERE jobname = 'capacity.timers'), 'SELECT flowgate.run_job(''capacity.timers'', ''pg_cron'')',
          'for every job');

-- Schedules are checked when they are set, not only when pg_cron is asked to use them.
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.dispatch_schedule', '"*/5 * * * * *"')$$, '22023',
    'invalid value for setting flowgate.dispatch_schedule: "*/5 * * * * *" has 6 fields, not 5',
    'a six-field schedule (pg_cron 1.4 would silently run it every 5 minutes) is refused');
SELECT lives_ok($$SELECT flowgate.set_setting('flowgate.dispatch_schedule', '"10 seconds"')$$, 'a seconds schedule is accepted');

SELECT * FROM finish();
ROLLBACK;

-- The outbox through SQL, against flowgate-testd on 127.0.0.1:5597 (started by pg_test/test.sh).
BEGIN;
SELECT plan(24);

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;
SELECT flowgate.set_setting('flowgate.http_transport', '"native"');

-- Success.
SELECT ok(flowgate.enqueue_delivery('tap', 'r1', 'http://127.0.0.1:5597/ok', 'tap-ok-1', '{"hello": "world"}') > 0, 'enqueue');
SELECT is(flowgate.enqueue_delivery('tap', 'r1', 'http://127.0.0.1:5597/ok', 'tap-ok-1', '{"hello": "world"}'),
          (SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-ok-1'), 'the same key returns the same delivery');
SELECT is((flowgate.dispatch(10) ->> 'delivered')::int, 1, 'dispatch delivers it');
SELECT is((SELECT status::text FROM flowgate.deliveries WHERE idempotency_key = 'tap-ok-1'), 'delivered', 'status delivered');
SELECT is((SELECT (response_body::jsonb ->> 'key') FROM flowgate.deliveries WHERE idempotency_key = 'tap-ok-1'), 'tap-ok-1',
          'the server saw the Idempotency-Key header');
SELECT ok((SELECT delivered_at IS NOT NULL AND claimed_at IS NULL AND attempts = 1 FROM flowgate.deliveries WHERE idempotency_key = 'tap-ok-1'),
          'delivered_at set, claim released, one attempt');

-- A permanent failure and a retry.
SELECT flowgate.enqueue_delivery('tap', 'r2', 'http://127.0.0.1:5597/status/404', 'tap-404');
SELECT flowgate.enqueue_delivery('tap', 'r3', 'http://127.0.0.1:5597/status/502', 'tap-502', max_attempts => 3);
SELECT is(flowgate.dispatch(10) - 'transport', '{"claimed": 2, "queued": 0, "delivered": 0, "retry": 1, "failed": 1, "dead": 0, "skipped": 0, "handler_error": 0}'::jsonb,
          'one failed (404), one retried (502)');
SELECT is((SELECT status::text || ' ' || last_error FROM flowgate.deliveries WHERE idempotency_key = 'tap-404'),
          'failed HTTP 404 is a permanent error (not retried)', '404 fails at once');
SELECT ok((SELECT status = 'pending' AND next_attempt_at > now() AND last_status_code = 502 FROM flowgate.deliveries WHERE idempotency_key = 'tap-502'),
          '502 waits for its back-off');

-- A crash between send and record: the attempt is rolled back, the row is sent once more
-- with the same key, and the server has seen it exactly twice.
SELECT flowgate.enqueue_delivery('tap', 'r4', 'http://127.0.0.1:5597/ok', 'tap-crash-1');
SAVEPOINT before_crash;
SELECT is((flowgate.dispatch(10) ->> 'delivered')::int, 1, 'first send');
ROLLBACK TO SAVEPOINT before_crash;
SELECT is((SELECT status::text FROM flowgate.deliveries WHERE idempotency_key = 'tap-crash-1'), 'pending', 'the lost attempt left it pending');
SELECT is((flowgate.dispatch(10) ->> 'delivered')::int, 1, 'sent again');
SELECT is((SELECT (response_body::jsonb ->> 'seen')::int FROM flowgate.deliveries WHERE idempotency_key = 'tap-crash-1'), 2,
          'at most one extra send, with the same idempotency key');

-- Bad input writes nothing.
SELECT throws_ok($$SELECT flowgate.enqueue_delivery('tap', 'x', 'http://127.0.0.1:5597/ok', 'tap-bad', headers => '{"Authorization": "Bearer leaked"}')$$,
                 '22023', NULL, 'credentials in plain headers are refused');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE idempotency_key = 'tap-bad'), 0, 'and nothing was written');

-- Callers who are not the owner.
SET LOCAL ROLE authenticated;
SELECT throws_ok('SELECT flowgate.dispatch()', '42501', NULL, 'authenticated cannot dispatch');
SELECT throws_ok('SELECT count(*) FROM flowgate.deliveries', '42501', NULL, 'authenticated cannot read deliveries');
SELECT throws_ok('SELECT count(*) FROM flowgate.secrets', '42501', NULL, 'authenticated cannot read secrets');
SELECT throws_ok($$SELECT flowgate.set_secret('x', 'y')$$, '42501', NULL, 'authenticated cannot write secrets');
SELECT throws_ok($$SELECT flowgate.enqueue_delivery('tap', 'x', 'http://127.0.0.1:5597/ok', 'tap-role')$$, '42501', NULL,
                 'authenticated cannot enqueue arbitrary HTTP');
RESET ROLE;

-- pg_cron registration.
SELECT is((SELECT count(*)::int FROM flowgate.install_schedules()), 8, 'install_schedules registers dispatch, collect, capacity timers, intake drain and metrics, ops expiry, provisioning runs, and prune');
SELECT lives_ok('SELECT * FROM flowgate.install_schedules()', 'installing again is harmless');
SELECT is((SELECT string_agg(jobname || ' | ' || schedule || ' | ' || command, E'\n' ORDER BY jobname)
             FROM cron.job WHERE jobname ~ '^(flowgate|capacity|intake|ops|provisioning)[.]'),
          E'capacity.timers | */15 * * * * | SELECT capacity.run_capacity_request_timers()\nflowgate.collect | * * * * * | SELECT flowgate.collect()\nflowgate.dispatch | * * * * * | SELECT flowgate.dispatch()\nflowgate.prune | 17 * * * * | SELECT flowgate.prune_deliveries()'
          || E'\nintake.drain | * * * * * | SELECT intake.drain_all()\nintake.metrics | * * * * * | SELECT intake.collect_metrics(NULL, 4.5)\nops.expiry | * * * * * | SELECT ops.expire_bypasses()\nprovisioning.run | * * * * * | SELECT provisioning.run_jobs()',
          'one job each, with the schedules from settings (5-second schedules become every minute on pg_cron 1.4)');
SELECT is(flowgate.uninstall_schedules(), 8::bigint, 'uninstall removes them all');

SELECT * FROM finish();
ROLLBACK;

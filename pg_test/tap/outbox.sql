-- The outbox through SQL, against flowgate-testd on 127.0.0.1:5597 (started by pg_test/test.sh).
BEGIN;
SELECT plan(39);

-- The SQLSTATE and message of a statement's error, or 'ok'.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text; m text; h text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
    RETURN s || ': ' || m || ' | ' || coalesce(h, '');
END $$;

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
          (SELECT string_agg(j || ' | ' || sch || ' | SELECT flowgate.run_job(''' || j || ''', ''pg_cron'')', E'\n' ORDER BY j)
             FROM (VALUES ('capacity.timers', '*/15 * * * *'), ('flowgate.collect', '* * * * *'), ('flowgate.dispatch', '* * * * *'),
                          ('flowgate.prune', '17 * * * *'), ('intake.drain', '* * * * *'), ('intake.metrics', '* * * * *'),
                          ('ops.expiry', '* * * * *'), ('provisioning.run', '* * * * *')) v(j, sch)),
          'one job each, with the schedules from settings (5-second schedules become every minute on pg_cron 1.4), run through flowgate.run_job');
SELECT is(flowgate.uninstall_schedules(), 8::bigint, 'uninstall removes them all');

-- The outbox at a glance.
SELECT is((SELECT deliveries::int FROM flowgate.outbox_summary WHERE module = 'tap' AND destination = '127.0.0.1' AND status = 'failed'), 1,
          'outbox_summary counts deliveries per module, destination and status');
SELECT is((SELECT last_error FROM flowgate.outbox_summary WHERE module = 'tap' AND destination = '127.0.0.1' AND status = 'failed'),
          'HTTP 404 is a permanent error (not retried)', 'with the latest error');

-- Secrets: encrypted at rest, checked before storing, never echoed.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
SET LOCAL flowgate.tenant_key_passphrase = 'tap-passphrase-0123456789abcdef';
SELECT is(flowgate.set_secret('tap_token', 'tap-secret-token-Zq81'), 'pgcrypto', 'without Vault a secret is stored with pgcrypto');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.secrets WHERE strpos(encode(value_encrypted, 'escape'), 'tap-secret-token') > 0),
          'flowgate.secrets (and so its dump) holds ciphertext only');
CREATE TEMP TABLE secret_errors AS
SELECT v AS value, pg_temp.err(format('SELECT flowgate.set_secret(%L, %L)', n, v)) AS e
  FROM (VALUES ('tap_token', 'sk_live_…'), ('tap_token', E'line\nbreak-secret-ABC'), ('bad name; --', 'leaky-secret-value-XYZ'),
               ('tap_token', ' padded-secret-DEF')) t(n, v);
SELECT is((SELECT string_agg(DISTINCT split_part(e, ':', 1), ',') FROM secret_errors), '22023',
          'a value that cannot travel in an HTTP header (or a bad name) is refused with 22023');
SELECT ok(NOT EXISTS (SELECT FROM secret_errors WHERE strpos(e, trim(value)) > 0 OR e LIKE '%secret-ABC%'),
          'and no error shows the value');
SELECT is((SELECT count(*)::int FROM flowgate.secrets WHERE name <> 'tap_token'), 0, 'nothing else was stored');
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, auth_secret)
VALUES ('tap', 'r-auth', 'http://127.0.0.1:5597/ok', 'tap-auth-nopass', 'tap_token');
SET LOCAL flowgate.tenant_key_passphrase = 'another-passphrase-0123456789';
SELECT is(flowgate.dispatch_ids(ARRAY[(SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-auth-nopass')]) ->> 'failed', '1',
          'a secret stored under another passphrase fails its delivery, the batch goes on');
SELECT alike((SELECT last_error FROM flowgate.deliveries WHERE idempotency_key = 'tap-auth-nopass'),
             '%secret "tap_token"%passphrase%', 'naming the secret and what to set, not the value');
RESET flowgate.tenant_key_passphrase;

-- Sensitive deliveries (a tenant's database password out, API keys back) keep neither body once
-- they end, on every path: here the response handler fails, so the isolated recorder's
-- fallback ends the delivery.
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, body, sensitive, handler, status, attempts, claimed_at)
VALUES ('tap', 'r-secret', 'http://127.0.0.1:5597/ok', 'tap-sensitive-1', '{"db_pass": "hunter2-tenant"}', true,
        'tap.no_such_handler', 'in_flight', 1, now());
SELECT is(flowgate.record_attempt_isolated((SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-sensitive-1'),
          200, NULL, '{"api_keys": [{"name": "service_role", "api_key": "eyJ-secret"}]}', 'application/json', NULL, NULL),
          'handler_error', 'the response handler fails');
SELECT is((SELECT status::text || ' ' || body::text || ' ' || coalesce(response_body, '<none>') FROM flowgate.deliveries WHERE idempotency_key = 'tap-sensitive-1'),
          'delivered {"redacted": true} <none>', 'the failed handler path redacts the request and keeps no response');
UPDATE flowgate.deliveries SET status = 'failed' WHERE idempotency_key = 'tap-sensitive-1';
SELECT throws_ok($$UPDATE flowgate.deliveries SET status = 'pending' WHERE idempotency_key = 'tap-sensitive-1'$$, '55000', NULL,
          'a redacted delivery cannot be requeued (it would send the placeholder)');
SELECT is(flowgate.replay_dead(ARRAY[(SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-sensitive-1'), -1]) - 'ids',
          jsonb_build_object('replayed', 0, 'skipped', jsonb_build_array(
              jsonb_build_object('id', -1, 'why', 'no such delivery'),
              jsonb_build_object('id', (SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-sensitive-1'),
                                 'why', 'it carried secrets and was redacted when it ended: its owner starts a new delivery'))),
          'replay_dead skips what it cannot replay and says why');
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, body, sensitive, status)
VALUES ('tap', 'r-secret', 'http://127.0.0.1:5597/ok', 'tap-sensitive-2', '{"db_pass": "hunter2-tenant"}', true, 'pending');
UPDATE flowgate.deliveries SET status = 'dead', response_body = 'eyJ-secret' WHERE idempotency_key = 'tap-sensitive-2';
SELECT is((SELECT body::text || ' ' || coalesce(response_body, '<none>') FROM flowgate.deliveries WHERE idempotency_key = 'tap-sensitive-2'),
          '{"redacted": true} <none>', 'so does an operator''s direct UPDATE to dead');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.deliveries WHERE sensitive AND (body::text LIKE '%hunter2%' OR response_body LIKE '%eyJ%')),
          'no secret is left in any sensitive delivery');

SELECT * FROM finish();
ROLLBACK;

-- The outbox through SQL, against flowgate-testd on 127.0.0.1:5597 (started by pg_test/test.sh).
-- Sending is CALL flowgate.run_outbox(): it claims (commit), sends with no transaction open and
-- records (commit), so it cannot run inside BEGIN … ROLLBACK. This file therefore runs in
-- autocommit where it sends, and in BEGIN … ROLLBACK blocks where it does not. What it commits
-- carries keys of its own, new on every run (flowgate-testd counts the requests of each key for
-- as long as it runs): tap-outbox-<run>-…, all removed at the end, as are the secret and the
-- setting it stores. The test server's background worker runs the outbox in this database too,
-- so a committed delivery may be sent by the worker before this file's CALL: the checks read
-- the rows (and flowgate-testd's per-key counts in the responses) once they have settled.
SELECT plan(61);

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

-- Wait (up to 10 s) until none of the deliveries whose key is LIKE the pattern is in flight or
-- due: whoever claimed them (this file's CALL or the worker) has recorded their outcome.
CREATE FUNCTION pg_temp.settle(pattern text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM flowgate.deliveries
                               WHERE idempotency_key LIKE pattern
                                 AND (status = 'in_flight' OR (status = 'pending' AND next_attempt_at <= clock_timestamp())));
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;
SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pgcrypto') AS made_pgcrypto \gset
SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
RESET client_min_messages;
-- This run's keys; what an interrupted earlier run left behind goes first.
SELECT 'tap-outbox-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS run \gset
DELETE FROM flowgate.deliveries WHERE idempotency_key LIKE 'tap-outbox-%' AND status <> 'in_flight';
SELECT flowgate.set_setting('flowgate.http_transport', '"native"') \g /dev/null

-- Success.
SELECT ok(flowgate.enqueue_delivery('tap_outbox', 'r1', 'http://127.0.0.1:5597/ok', :'run' || '-ok-1', '{"hello": "world"}') > 0, 'enqueue');
SELECT is(flowgate.enqueue_delivery('tap_outbox', 'r1', 'http://127.0.0.1:5597/ok', :'run' || '-ok-1', '{"hello": "world"}'),
          (SELECT id FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-ok-1'), 'the same key returns the same delivery');
CALL flowgate.run_outbox() \gset
SELECT is((SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(:'summary'::jsonb) k) || ' ' || (:'summary'::jsonb ->> 'transport'),
          'claimed,dead,delivered,failed,handler_error,queued,retry,rounds,sent,skipped,transport native',
          'CALL flowgate.run_outbox() sends what is due and answers a summary of its run');
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-ok-1'), 'delivered', 'status delivered');
SELECT is((SELECT (response_body::jsonb ->> 'key') FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-ok-1'), :'run' || '-ok-1',
          'the server saw the Idempotency-Key header');
SELECT ok((SELECT delivered_at IS NOT NULL AND claimed_at IS NULL AND attempts = 1 FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-ok-1'),
          'delivered_at set, claim released, one attempt');

-- An answer of 2 MiB: its first 64 KiB are kept (the character the cut splits left out), and
-- no more of it is read.
SELECT flowgate.enqueue_delivery('tap_outbox', 'r1', 'http://127.0.0.1:5597/huge', :'run' || '-huge', max_attempts => 1) \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || last_status_code || ' ' || octet_length(response_body) || ' ' || left(response_body, 3)
             FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-huge'), 'dead 500 65535 <éé',
          'a 2 MiB answer is stored as its first 64 KiB, cut before the character the limit splits');

-- A permanent failure, retries, and a Retry-After.
SELECT flowgate.enqueue_delivery('tap_outbox', 'r2', 'http://127.0.0.1:5597/status/404', :'run' || '-404') \g /dev/null
SELECT flowgate.enqueue_delivery('tap_outbox', 'r3', 'http://127.0.0.1:5597/status/502', :'run' || '-502', max_attempts => 2) \g /dev/null
-- (Its own flow key: a 429 pauses its whole flow key, here for two minutes.)
SELECT flowgate.enqueue_delivery('tap_outbox', 'r5', 'http://127.0.0.1:5597/ratelimit/120', :'run' || '-429', flow_key => :'run' || '-flow') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT is((:'summary'::jsonb ->> 'claimed')::int,
          (SELECT sum(value::int)::int FROM jsonb_each_text(:'summary'::jsonb)
            WHERE key IN ('queued', 'delivered', 'retry', 'failed', 'dead', 'skipped', 'handler_error')),
          'every delivery a CALL claims is counted once: queued, or by the outcome recorded');
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT string_agg(right(idempotency_key, 3) || CASE WHEN status = 'failed' THEN ' failed ' ELSE ' kept ' END || last_status_code, ', '
                             ORDER BY idempotency_key)
             FROM flowgate.deliveries WHERE idempotency_key IN (:'run' || '-404', :'run' || '-502')),
          '404 failed 404, 502 kept 502', 'one failed (404), one retried (502)');
SELECT is((SELECT status::text || ' ' || attempts || ' ' || last_error FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-404'),
          'failed 1 HTTP 404 is a permanent error (not retried)', '404 fails at once');
SELECT ok((SELECT status = 'pending' AND attempts = 1 AND last_status_code = 429 AND next_attempt_at - updated_at >= interval '119 seconds'
             FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-429'),
          'a 429 waits for its Retry-After (120 s) before the next attempt');
-- Do not wait out the 502's back-off.
UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key = :'run' || '-502' AND status = 'pending';
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || attempts || ' ' || last_status_code || ' ' || last_error FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-502'),
          'dead 2 502 HTTP 502; gave up after 2 attempts', 'the 502 is retried, and dead once it reaches max_attempts');

-- A crash between send and record: the claim committed and the request went out, but the
-- sender's backend died before recording it. The row stays in flight until its lease passes;
-- flowgate.collect then counts a timed-out attempt, the row is sent once more with the same
-- key, and the server has seen that key exactly twice.
SELECT flowgate.enqueue_delivery('tap_outbox', 'r4', 'http://127.0.0.1:5597/ok', :'run' || '-crash-1') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || attempts || ' ' || (response_body::jsonb ->> 'seen') FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-crash-1'),
          'delivered 1 1', 'first send');
BEGIN;
-- Undo the recording of that attempt, as if its sender died after the send, two hours ago.
UPDATE flowgate.deliveries
   SET status = 'in_flight', claimed_at = now() - interval '2 hours', delivered_at = NULL,
       last_status_code = NULL, last_error = NULL, response_body = NULL, response_content_type = NULL
 WHERE idempotency_key = :'run' || '-crash-1';
SELECT ok((flowgate.collect() ->> 'expired')::int >= 1, 'collect expires an in-flight delivery whose lease has passed');
SELECT is((SELECT status::text || ' ' || attempts || ' ' || last_error || ' ' || (claimed_at IS NULL)::text
             FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-crash-1'),
          'pending 1 timed out true', 'the lost attempt left it pending, as a timed-out attempt');
-- Do not wait out the back-off.
UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE idempotency_key = :'run' || '-crash-1';
COMMIT;
-- A native attempt of an earlier run of the server (it restarted or crashed since) lost its
-- sender: collect counts it lost at once, not after its lease. One of this run, and one claimed
-- before runs existed (no run), wait for their lease.
BEGIN;
INSERT INTO flowgate.server_run AS r (run, started) VALUES (gen_random_uuid(), pg_postmaster_start_time())
    ON CONFLICT (only_row) DO UPDATE SET run = EXCLUDED.run, started = EXCLUDED.started WHERE r.started <> EXCLUDED.started;
SELECT flowgate.enqueue_delivery('tap_outbox', 'r5', 'http://127.0.0.1:5597/ok', :'run' || '-run-' || n) FROM generate_series(1, 3) n \g /dev/null
UPDATE flowgate.deliveries
   SET status = 'in_flight', attempts = 1, claimed_at = clock_timestamp(), transport = 'native',
       transport_epoch = CASE idempotency_key WHEN :'run' || '-run-1' THEN gen_random_uuid()
                                              WHEN :'run' || '-run-2' THEN (SELECT run FROM flowgate.server_run) END
 WHERE idempotency_key LIKE :'run' || '-run-%';
SELECT flowgate.collect() \g /dev/null
SELECT is((SELECT string_agg(right(idempotency_key, 1) || ' ' || status || ' ' || coalesce(left(last_error, 27), '-'), ', ' ORDER BY idempotency_key)
             FROM flowgate.deliveries WHERE idempotency_key LIKE :'run' || '-run-%'),
          '1 pending transport error: the server, 2 in_flight -, 3 in_flight -',
          'a native attempt of an earlier server run is lost at once; this run''s, and one of no run, wait for their lease');
ROLLBACK;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || attempts || ' ' || (response_body::jsonb ->> 'key') FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-crash-1'),
          'delivered 2 ' || :'run' || '-crash-1', 'sent again, with the same idempotency key');
SELECT is((SELECT (response_body::jsonb ->> 'seen')::int FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-crash-1'), 2,
          'at most one extra send: the server saw the key exactly twice');

-- Bad input writes nothing.
SELECT throws_ok(format($$SELECT flowgate.enqueue_delivery('tap_outbox', 'x', 'http://127.0.0.1:5597/ok', %L, headers => '{"Authorization": "Bearer leaked"}')$$,
                        :'run' || '-bad'),
                 '22023', NULL, 'credentials in plain headers are refused');
SELECT throws_ok(format($$SELECT flowgate.enqueue_delivery('tap_outbox', 'x', 'http://127.0.0.1:5597/ok', %L, '{"a": 1}', headers => '{"Content-Length": "0"}')$$,
                        :'run' || '-bad'),
                 '22023', NULL, 'a Content-Length header (which dropped the body) is refused');
SELECT throws_ok(format($$SELECT flowgate.enqueue_delivery('tap_outbox', 'x', 'http://127.0.0.1:5597/ok', %L, headers => jsonb_build_object('X-T', 'a' || chr(11) || 'b'))$$,
                        :'run' || '-bad'),
                 '22023', NULL, 'so is a header value with a control character');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-bad'), 0, 'and nothing was written');

BEGIN;
-- No sending inside a transaction: the CALL is refused before it claims anything.
SELECT throws_ok('CALL flowgate.run_outbox()', '2D000', NULL,
                 'CALL flowgate.run_outbox() inside a transaction block (or a function) is refused with 2D000');
SELECT throws_ok($$CALL flowgate.run_outbox(runner => 'cron')$$, '22023', NULL, 'an unknown runner is 22023');

-- Callers who are not the owner.
SET LOCAL ROLE authenticated;
SELECT throws_ok('CALL flowgate.run_outbox()', '42501', NULL, 'authenticated cannot run the outbox');
SELECT throws_ok('SELECT count(*) FROM flowgate.deliveries', '42501', NULL, 'authenticated cannot read deliveries');
SELECT throws_ok('SELECT count(*) FROM flowgate.secrets', '42501', NULL, 'authenticated cannot read secrets');
SELECT throws_ok($$SELECT flowgate.set_secret('x', 'y')$$, '42501', NULL, 'authenticated cannot write secrets');
SELECT throws_ok(format($$SELECT flowgate.enqueue_delivery('tap_outbox', 'x', 'http://127.0.0.1:5597/ok', %L)$$, :'run' || '-role'), '42501', NULL,
                 'authenticated cannot enqueue arbitrary HTTP');
RESET ROLE;

-- pg_cron registration (rolled back: pg_cron would run these jobs in this database).
SELECT is((SELECT count(*)::int FROM flowgate.install_schedules()), 8, 'install_schedules registers dispatch, collect, capacity timers, intake drain and metrics, ops expiry, provisioning runs, and prune');
SELECT lives_ok('SELECT * FROM flowgate.install_schedules()', 'installing again is harmless');
SELECT is((SELECT string_agg(jobname || ' | ' || schedule || ' | ' || command, E'\n' ORDER BY jobname)
             FROM cron.job WHERE jobname ~ '^(flowgate|capacity|intake|ops|provisioning)[.]'),
          (SELECT string_agg(j || ' | ' || sch || ' | ' || CASE WHEN j = 'flowgate.dispatch' THEN 'CALL flowgate.run_outbox(runner => ''pg_cron'')'
                                                                ELSE 'SELECT flowgate.run_job(''' || j || ''', ''pg_cron'')' END, E'\n' ORDER BY j)
             FROM (VALUES ('capacity.timers', '*/15 * * * *'), ('flowgate.collect', '* * * * *'), ('flowgate.dispatch', '* * * * *'),
                          ('flowgate.prune', '17 * * * *'), ('intake.drain', '* * * * *'), ('intake.metrics', '* * * * *'),
                          ('ops.expiry', '* * * * *'), ('provisioning.run', '* * * * *')) v(j, sch)),
          'one job each, with the schedules from settings (5-second schedules become every minute on pg_cron 1.4): the outbox as CALL flowgate.run_outbox, the others through flowgate.run_job');
SELECT is(flowgate.uninstall_schedules(), 8::bigint, 'uninstall removes them all');
-- A restored dump's jobs: another role's, for a database of another name (the source's).
INSERT INTO cron.job (schedule, command, nodename, nodeport, database, username, jobname)
VALUES ('* * * * *', 'SELECT 1', 'localhost', 5432, 'fg_source_db_gone', 'fg_source_owner', 'flowgate.dispatch'),
       ('* * * * *', 'SELECT 1', 'localhost', 5432, current_database(), 'fg_source_owner', 'flowgate.collect'),
       ('* * * * *', 'SELECT 1', 'localhost', 5432, 'postgres', 'fg_source_owner', 'flowgate.prune');
SELECT is(flowgate.uninstall_schedules(), 2::bigint,
          'a superuser also removes a restored dump''s jobs (another role''s here, or for a database this server lacks), not another database''s');
ROLLBACK;

-- The outbox at a glance.
SELECT is((SELECT deliveries::int FROM flowgate.outbox_summary WHERE module = 'tap_outbox' AND destination = '127.0.0.1' AND status = 'failed'), 1,
          'outbox_summary counts deliveries per module, destination and status');
SELECT is((SELECT last_error FROM flowgate.outbox_summary WHERE module = 'tap_outbox' AND destination = '127.0.0.1' AND status = 'failed'),
          'HTTP 404 is a permanent error (not retried)', 'with the latest error');

-- A delivery written directly holds to the rule flowgate.enqueue_delivery checks URLs with: no
-- credentials in the table (and so in its dumps), whoever writes it.
SELECT throws_ok($$INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key)
                   VALUES ('tap_outbox', 'r-cred', 'https://payuser:S3cr3tPassw0rd@pay.example/x', 'tap-cred-direct')$$,
                 '23514', NULL, 'a delivery written directly to a URL with credentials is refused');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE idempotency_key = 'tap-cred-direct'), 0, 'and nothing was written');

-- Sensitive deliveries (a tenant's database password out, API keys back) keep neither body once
-- they end, on every path: here the response handler fails, so flowgate.record_attempt keeps the
-- delivery (a 2xx stays delivered) with the handler's error, its writes undone in a subtransaction.
BEGIN;
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, body, sensitive, handler, status, attempts, claimed_at)
VALUES ('tap_outbox', 'r-secret', 'http://127.0.0.1:5597/ok', :'run' || '-sensitive-1', '{"db_pass": "hunter2-tenant"}', true,
        'tap.no_such_handler', 'in_flight', 1, now());
SELECT is(flowgate.record_attempt((SELECT id FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-sensitive-1'),
          200, NULL, '{"api_keys": [{"name": "service_role", "api_key": "eyJ-secret"}]}', 'application/json', NULL, NULL),
          'handler_error', 'the response handler fails: record_attempt answers handler_error, and the transaction goes on');
SELECT is((SELECT status::text || ' ' || body::text || ' ' || coalesce(response_body, '<none>') || ' ' || split_part(handler_error, ':', 1)
             FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-sensitive-1'),
          'delivered {"redacted": true} <none> 22023', 'the failed handler path redacts the request, keeps no response and records the handler''s error');
UPDATE flowgate.deliveries SET status = 'failed' WHERE idempotency_key = :'run' || '-sensitive-1';
SELECT throws_ok(format($$UPDATE flowgate.deliveries SET status = 'pending' WHERE idempotency_key = %L$$, :'run' || '-sensitive-1'), '55000', NULL,
          'a redacted delivery cannot be requeued (it would send the placeholder)');
SELECT is(flowgate.replay_dead(ARRAY[(SELECT id FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-sensitive-1'), -1]) - 'ids',
          jsonb_build_object('replayed', 0, 'skipped', jsonb_build_array(
              jsonb_build_object('id', -1, 'why', 'no such delivery'),
              jsonb_build_object('id', (SELECT id FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-sensitive-1'),
                                 'why', 'it carried secrets and was redacted when it ended: its owner starts a new delivery'))),
          'replay_dead skips what it cannot replay and says why');
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, body, sensitive, status)
VALUES ('tap_outbox', 'r-secret', 'http://127.0.0.1:5597/ok', :'run' || '-sensitive-2', '{"db_pass": "hunter2-tenant"}', true, 'pending');
UPDATE flowgate.deliveries SET status = 'dead', response_body = 'eyJ-secret' WHERE idempotency_key = :'run' || '-sensitive-2';
SELECT is((SELECT body::text || ' ' || coalesce(response_body, '<none>') FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-sensitive-2'),
          '{"redacted": true} <none>', 'so does an operator''s direct UPDATE to dead');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.deliveries WHERE sensitive AND (body::text LIKE '%hunter2%' OR response_body LIKE '%eyJ%')),
          'no secret is left in any sensitive delivery');
ROLLBACK;

-- Secrets: encrypted at rest, checked before storing, never echoed.
SET flowgate.tenant_key_passphrase = 'tap-passphrase-0123456789abcdef';
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
SELECT is((SELECT string_agg(name, ',') FROM flowgate.secrets WHERE name IN ('tap_token', 'bad name; --')) || ' '
          || (SELECT pgp_sym_decrypt(value_encrypted, 'tap-passphrase-0123456789abcdef') FROM flowgate.secrets WHERE name = 'tap_token'),
          'tap_token tap-secret-token-Zq81', 'nothing else was stored, and tap_token keeps its value');
-- Sent under another passphrase (the worker, if it gets there first, has a third one): the
-- delivery with the secret fails, the one next to it in the batch is delivered.
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, auth_secret)
VALUES ('tap_outbox', 'r-auth', 'http://127.0.0.1:5597/ok', :'run' || '-auth-nopass', 'tap_token'),
       ('tap_outbox', 'r-auth', 'http://127.0.0.1:5597/ok', :'run' || '-auth-neighbour', NULL);
SET flowgate.tenant_key_passphrase = 'another-passphrase-0123456789';
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT string_agg(split_part(idempotency_key, '-auth-', 2) || ' ' || status, ', ' ORDER BY idempotency_key)
             FROM flowgate.deliveries WHERE idempotency_key IN (:'run' || '-auth-nopass', :'run' || '-auth-neighbour')),
          'neighbour delivered, nopass failed',
          'a secret stored under another passphrase fails its delivery, the batch goes on');
SELECT alike((SELECT last_error FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-auth-nopass'),
             '%secret "tap_token"%passphrase%', 'naming the secret and what to set, not the value');
RESET flowgate.tenant_key_passphrase;
-- The passphrase from a file (a setting's value is readable by pg_read_all_settings members):
-- used instead of the setting when flowgate.tenant_key_passphrase_file names one.
COPY (SELECT 'file-passphrase-0123456789abcdef') TO '/tmp/flowgate-tap-passphrase';
SET flowgate.tenant_key_passphrase_file = '/tmp/flowgate-tap-passphrase';
SELECT flowgate.set_secret('tap_file_token', 'tap-file-token-0001') \g /dev/null
SELECT is((SELECT pgp_sym_decrypt(value_encrypted, 'file-passphrase-0123456789abcdef') FROM flowgate.secrets WHERE name = 'tap_file_token'),
          'tap-file-token-0001', 'a secret is encrypted under the passphrase file''s first line');
SET flowgate.tenant_key_passphrase_file = 'relative/passphrase';
SELECT throws_ok($$SELECT flowgate.set_secret('tap_file_token', 'tap-file-token-0002')$$, '0A000', NULL,
                 'a passphrase file that is not an absolute path is refused (0A000)');
SET flowgate.tenant_key_passphrase_file = '/tmp/flowgate-tap-no-such-passphrase';
SELECT alike(pg_temp.err($$SELECT flowgate.set_secret('tap_file_token', 'tap-file-token-0003')$$),
             '0A000:%/tmp/flowgate-tap-no-such-passphrase%', 'so is one the server cannot read, by its path');
RESET flowgate.tenant_key_passphrase_file;
-- A delivery the HTTP client cannot build a request from (a host that is not ASCII) fails at
-- its first attempt: sending it again could not go otherwise.
INSERT INTO flowgate.deliveries (owner_module, owner_id, url, idempotency_key, max_attempts)
VALUES ('tap_outbox', 'r-idn', 'https://bücher.example/x', :'run' || '-idn', 5);
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-idn') \g /dev/null
SELECT alike((SELECT status || ' ' || attempts || ' ' || last_error FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-idn'),
             'failed 1 the request cannot be sent: %(not retried)', 'a request the client cannot build is failed at once, not retried');
-- What an Edge Function reports is bounded before anything is recorded (22023).
SELECT throws_ok($$SELECT flowgate.record_attempt(1, NULL, NULL, NULL, NULL, 'transport', repeat('x', 9000))$$,
                 '22023', NULL, 'record_attempt refuses an error text over 8 KiB (22023)');
SELECT throws_ok($$SELECT flowgate.record_attempt(1, 200, NULL, repeat('x', 1048577), 'text/plain', NULL, NULL)$$,
                 '22023', NULL, 'and a body over 1 MiB');
-- Never where every role reads it: pg_db_role_setting (ALTER DATABASE/ROLE ... SET, which
-- pg_dumpall also writes out) or pg_proc (a function's SET clause).
SELECT is(pg_temp.err(format('ALTER DATABASE %I SET flowgate.tenant_key_passphrase = %L', current_database(), 'db-level-passphrase-0123456789')),
          '22023: flowgate.tenant_key_passphrase cannot be set for a database, a role or a function | '
          || 'Name a file holding it with flowgate.tenant_key_passphrase_file (the passphrase then appears in no SQL statement or log), or set flowgate.tenant_key_passphrase in postgresql.conf.',
          'ALTER DATABASE ... SET flowgate.tenant_key_passphrase is refused (22023), saying where to set it and not quoting the value');
SELECT throws_ok($$ALTER ROLE CURRENT_USER SET flowgate.tenant_key_passphrase = 'role-level-passphrase-0123456789'$$,
                 '22023', NULL, 'so is ALTER ROLE ... SET');
SELECT throws_ok($$CREATE FUNCTION pg_temp.with_passphrase() RETURNS int LANGUAGE sql
                   SET flowgate.tenant_key_passphrase = 'fn-level-passphrase-0123456789' AS 'SELECT 1'$$,
                 '22023', NULL, 'and a function''s SET clause');
SELECT ok(NOT EXISTS (SELECT FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE c LIKE 'flowgate.tenant_key_passphrase=%'),
          'nothing of it was stored');

-- Leave the database as found.
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
DELETE FROM flowgate.deliveries WHERE idempotency_key LIKE :'run' || '-%';
SELECT flowgate.drop_secret('tap_token') \g /dev/null
SELECT flowgate.drop_secret('tap_file_token') \g /dev/null
SELECT flowgate.reset_setting('flowgate.http_transport') \g /dev/null
DROP TABLE secret_errors;
\if :made_pgcrypto
DROP EXTENSION pgcrypto;
\endif
SELECT * FROM finish();

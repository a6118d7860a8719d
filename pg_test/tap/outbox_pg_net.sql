-- The pg_net transport. CALL flowgate.run_outbox() claims, queues the request with
-- net.http_post and commits (pg_net sends only after that commit); flowgate.collect() records
-- the response later. So this file runs in autocommit, waits for the pg_net worker, and cleans
-- up after itself (its delivery, the setting, and pg_net itself when it created it). Where
-- pg_net is not installed and preloaded the whole file is reported as skipped
-- (TAP "1..0 # SKIP"), not passed.
SELECT NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_net')
    OR current_setting('shared_preload_libraries') NOT LIKE '%pg_net%' AS no_pg_net \gset
\if :no_pg_net
\echo '1..0 # SKIP pg_net is not installed and preloaded on this server (no Debian package); run this suite in the Docker image'
\quit
\endif

SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS pgtap;
RESET client_min_messages;
SELECT plan(23);
SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_net') AS made_pg_net \gset
SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS pg_net;
RESET client_min_messages;
-- A key of this run's own (flowgate-testd counts the requests of each key for as long as it runs).
SELECT 'tap-pgnet-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS key \gset

-- pg_net as installed lets PUBLIC read its request queue and write its responses: any role could
-- then read a request and forge the response flowgate records. auto does not use it then, and
-- asking for it by name is refused; once those grants are revoked it carries deliveries.
SELECT has_schema_privilege('public', 'net', 'USAGE') AS net_was_open,
       has_table_privilege('public', 'net.http_request_queue', 'SELECT') AS queue_was_open,
       has_table_privilege('public', 'net._http_response', 'INSERT') AS responses_were_open \gset
GRANT USAGE ON SCHEMA net TO PUBLIC;
GRANT SELECT ON net.http_request_queue TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON net._http_response TO PUBLIC;
SELECT is(flowgate.effective_transport(), 'native', 'auto does not use a pg_net whose queue and responses PUBLIC can read and write');
SELECT flowgate.set_setting('flowgate.http_transport', '"pg_net"') \g /dev/null
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL, 'and pg_net by name is refused there (the hint names the REVOKEs)');
-- pg_net 0.12+ grants PUBLIC every privilege on both tables and the queue's sequence.
REVOKE ALL ON ALL TABLES IN SCHEMA net FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA net FROM PUBLIC;
-- Closed to reading but open to tampering is open too: a role that may put a trigger on the
-- queue (it would run as whoever queues: the outbox's runner), a role that may set the queue's
-- id sequence (ids of requests in flight), and a user trigger already on the queue.
SELECT pg_get_serial_sequence('net.http_request_queue', 'id') AS queue_seq \gset
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tap_pgnet_other') THEN CREATE ROLE tap_pgnet_other NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA net TO tap_pgnet_other;
GRANT TRIGGER ON net.http_request_queue TO tap_pgnet_other;
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL,
                 'pg_net is refused where another role may put a trigger on its queue (it would run as the runner)');
REVOKE TRIGGER ON net.http_request_queue FROM tap_pgnet_other;
GRANT UPDATE ON SEQUENCE :queue_seq TO tap_pgnet_other;
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL, 'or may set its request ids');
REVOKE ALL ON SEQUENCE :queue_seq FROM tap_pgnet_other;
REVOKE USAGE ON SCHEMA net FROM tap_pgnet_other;
DROP ROLE tap_pgnet_other;
CREATE FUNCTION public.tap_pgnet_peek() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER tap_pgnet_peek BEFORE INSERT ON net.http_request_queue FOR EACH ROW EXECUTE FUNCTION public.tap_pgnet_peek();
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL, 'or where a user trigger sits on the queue');
DROP TRIGGER tap_pgnet_peek ON net.http_request_queue;
DROP FUNCTION public.tap_pgnet_peek();
-- Closed, pg_net is usable only by a runner that may queue, withdraw and read responses (pg_net's
-- owner keeps every right; on Supabase the outbox runs as postgres, which does not own them).
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tap_pgnet_runner') THEN CREATE ROLE tap_pgnet_runner NOLOGIN; END IF;
END $$;
SET ROLE tap_pgnet_runner;
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL,
                 'a runner that may not queue on pg_net is refused it (the hint names the grants)');
RESET ROLE;
GRANT USAGE ON SCHEMA net TO tap_pgnet_runner;
GRANT SELECT, INSERT, DELETE ON net.http_request_queue TO tap_pgnet_runner;
GRANT SELECT, DELETE ON net._http_response TO tap_pgnet_runner;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA net TO tap_pgnet_runner;
SET ROLE tap_pgnet_runner;
SELECT is(flowgate.effective_transport(), 'pg_net', 'granted them, it carries deliveries on pg_net');
RESET ROLE;
REVOKE ALL ON ALL TABLES IN SCHEMA net FROM tap_pgnet_runner;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA net FROM tap_pgnet_runner;
REVOKE USAGE ON SCHEMA net FROM tap_pgnet_runner;
DROP ROLE tap_pgnet_runner;
-- Closed to PUBLIC but open to PostgREST's authenticated role by a grant of its own is open too.
SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') AS has_authenticated \gset
\if :has_authenticated
GRANT INSERT ON net._http_response TO authenticated;
SELECT throws_ok('SELECT flowgate.effective_transport()', '0A000', NULL, 'so is one whose responses authenticated may write');
REVOKE INSERT ON net._http_response FROM authenticated;
\else
SELECT pass('so is one whose responses authenticated may write (no authenticated role here)');
\endif

SELECT flowgate.enqueue_delivery('tap', 'pgnet', 'http://127.0.0.1:5597/ok', :'key', '{"via": "pg_net"}') \g /dev/null
-- The test server's background worker runs the outbox too, and may claim the delivery first:
-- either way it goes out through pg_net.
CALL flowgate.run_outbox() \gset
SELECT is(:'summary'::jsonb ->> 'transport', 'pg_net', 'CALL flowgate.run_outbox() claims for pg_net when it is the transport');
SELECT is((:'summary'::jsonb ->> 'claimed')::int,
          (SELECT sum(value::int)::int FROM jsonb_each_text(:'summary'::jsonb)
            WHERE key IN ('queued', 'delivered', 'retry', 'failed', 'dead', 'skipped', 'handler_error')),
          'every delivery it claims is queued with pg_net or recorded (what pg_net cannot carry goes natively)');
SELECT ok((SELECT transport = 'pg_net' AND transport_ref IS NOT NULL FROM flowgate.deliveries WHERE idempotency_key = :'key'),
          'the delivery was queued with net.http_post, and the pg_net request id is kept');
SELECT ok((SELECT d.transport_epoch = e.epoch FROM flowgate.deliveries d, flowgate.pg_net_epoch e WHERE d.idempotency_key = :'key'),
          'with the pg_net epoch that id belongs to');

-- Wait (up to 10 s) for pg_net's worker to store the response, then collect it.
CREATE TEMP TABLE k AS SELECT :'key'::text AS key;
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT FROM net._http_response r JOIN flowgate.deliveries d ON d.transport_ref = r.id
                           WHERE d.idempotency_key = (SELECT key FROM k));
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
-- The test server's background worker runs flowgate.collect too: whichever collects first
-- records the response, exactly once.
DO $$
BEGIN
    FOR i IN 1..50 LOOP
        EXIT WHEN (SELECT status FROM flowgate.deliveries WHERE idempotency_key = (SELECT key FROM k)) = 'delivered';
        PERFORM flowgate.collect();
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT is((SELECT attempts FROM flowgate.deliveries WHERE idempotency_key = :'key'), 1,
          'collect (this call or the worker''s) records the response, once');
SELECT is((SELECT status::text FROM flowgate.deliveries WHERE idempotency_key = :'key'), 'delivered', 'delivered through pg_net');
SELECT is((SELECT response_body::jsonb ->> 'key' FROM flowgate.deliveries WHERE idempotency_key = :'key'), :'key',
          'the Idempotency-Key header went through pg_net');

-- A URL pg_net's parser refuses (flowgate's accepts it) would abort the claim of the whole
-- batch on every round: it travels natively instead, where its failure is recorded.
SELECT flowgate.enqueue_delivery('tap', 'pgnet-badurl', 'http://127.0.0.1:99999/x', :'key' || '-badurl', '{}') \g /dev/null
CALL flowgate.run_outbox() \gset
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT attempts >= 1 AND status <> 'in_flight' FROM flowgate.deliveries WHERE idempotency_key = (SELECT key FROM k) || '-badurl');
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT is((SELECT transport || ' ' || (attempts >= 1) || ' ' || (last_error IS NOT NULL) FROM flowgate.deliveries
            WHERE idempotency_key = :'key' || '-badurl'),
          'native true true', 'a URL pg_net refuses to queue travels natively, and its failure is recorded');

-- pg_net stores a response body as the server sent it, whatever its encoding: flowgate keeps
-- valid text (a byte that is not UTF-8 replaced), never bytes a dump could not restore.
SELECT flowgate.set_setting('flowgate.retry_base_ms', '3600000') \g /dev/null
SELECT flowgate.set_setting('flowgate.retry_cap_ms', '86400000') \g /dev/null
SELECT flowgate.enqueue_delivery('tap', 'pgnet-latin1', 'http://127.0.0.1:5597/latin1', :'key' || '-latin1', '{}') \g /dev/null
CALL flowgate.run_outbox() \gset
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT attempts >= 1 AND status <> 'in_flight' FROM flowgate.deliveries WHERE idempotency_key = (SELECT key FROM k) || '-latin1');
        PERFORM flowgate.collect();
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT is((SELECT transport || ' ' || last_status_code || ' ' || response_body FROM flowgate.deliveries WHERE idempotency_key = :'key' || '-latin1'),
          'pg_net 500 <p>Caf' || chr(65533) || '</p>', 'a Latin-1 body pg_net stored is kept as valid text');
DELETE FROM flowgate.deliveries WHERE idempotency_key IN (:'key' || '-badurl', :'key' || '-latin1') AND status <> 'in_flight';
SELECT flowgate.reset_setting('flowgate.retry_base_ms') \g /dev/null
SELECT flowgate.reset_setting('flowgate.retry_cap_ms') \g /dev/null

-- A request whose lease ran out while pg_net had not sent it (its worker slow, stopped, or
-- serving another database) is withdrawn from pg_net's queue before the delivery is sent
-- again: it never goes twice. Played in one transaction, so pg_net's worker cannot take the
-- queued row first.
BEGIN;
SELECT flowgate.enqueue_delivery('tap', 'pgnet-lapsed', 'http://127.0.0.1:5597/ok', :'key' || '-lapsed', '{}') AS lapsed_id \gset
INSERT INTO net.http_request_queue (method, url, headers, timeout_milliseconds)
VALUES ('POST', 'http://127.0.0.1:5597/ok', '{}', 1000) RETURNING id AS queued_ref \gset
UPDATE flowgate.deliveries SET status = 'in_flight', attempts = 1, transport = 'pg_net', claimed_at = clock_timestamp() - interval '2 hours',
       transport_ref = :queued_ref,
       transport_epoch = (SELECT epoch FROM flowgate.pg_net_epoch WHERE net_relid = to_regclass('net._http_response'))
 WHERE id = :lapsed_id;
SELECT flowgate.collect() \g /dev/null
SELECT is((SELECT (last_error LIKE '%withdrawn from pg_net''s queue%') || ' ' || status::text
                  || ' ' || NOT EXISTS (SELECT FROM net.http_request_queue WHERE id = :queued_ref)
             FROM flowgate.deliveries WHERE id = :lapsed_id),
          'true pending true', 'a pg_net request whose lease ran out before pg_net sent it is withdrawn from its queue, then sent again');
ROLLBACK;

-- More answers waiting than one collection reads (500), all past their lease (collect did not
-- run for a while: the worker stopped, pg_cron paused): those left for the next collection are
-- recorded by it with their answer, not expired as timed out and sent again. In one
-- transaction, so the test server's worker sees none of it.
BEGIN;
SELECT coalesce(max(id), 0) + 2000000 AS base FROM net._http_response \gset
CREATE TEMP TABLE backlog AS
SELECT flowgate.enqueue_delivery('tap', 'pgnet-backlog-' || g, 'http://127.0.0.1:5597/ok', :'key' || '-backlog-' || g, '{}') AS id, g
  FROM generate_series(1, 501) g;
UPDATE flowgate.deliveries d SET status = 'in_flight', attempts = 1, transport = 'pg_net', claimed_at = clock_timestamp() - interval '2 hours',
       transport_ref = :base + b.g,
       transport_epoch = (SELECT epoch FROM flowgate.pg_net_epoch WHERE net_relid = to_regclass('net._http_response'))
  FROM backlog b WHERE d.id = b.id;
INSERT INTO net._http_response (id, status_code, content_type, content, timed_out)
SELECT :base + g, 200, 'application/json', '{"ok": true}', false FROM backlog;
SELECT flowgate.collect() \g /dev/null
SELECT is((SELECT string_agg(DISTINCT d.status::text || ' ' || d.attempts, ', ') FROM flowgate.deliveries d JOIN backlog b ON b.id = d.id),
          'delivered 1, in_flight 1', 'a collection records 500 answers and leaves the rest in flight, answered, past their lease');
SELECT flowgate.collect() \g /dev/null
SELECT is((SELECT string_agg(DISTINCT d.status::text || ' ' || d.attempts || ' ' || d.last_status_code, ', ')
             FROM flowgate.deliveries d JOIN backlog b ON b.id = d.id),
          'delivered 1 200', 'the next records them with their answers: none timed out, none sent again');
ROLLBACK;

-- A crash (or a restore, or a promoted standby) resets pg_net's unlogged tables and its id
-- sequence, and flowgate.pg_net_epoch with them: a request id of before then may name a later
-- request. Played here: a delivery in flight under an earlier epoch's request id, and a
-- response stored under that id for another request. It is not that delivery's response: the
-- delivery is a lost attempt, retried with its key at once (not after its lease).
-- (A back-off of up to an hour meanwhile, so the test server's worker does not send it again
-- before it is looked at.)
SELECT flowgate.set_setting('flowgate.retry_base_ms', '3600000') \g /dev/null
SELECT flowgate.set_setting('flowgate.retry_cap_ms', '86400000') \g /dev/null
SELECT 'tap-pgnet-lost-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS lost \gset
SELECT flowgate.enqueue_delivery('tap', 'pgnet-lost', 'http://127.0.0.1:5597/ok', :'lost', '{"via": "pg_net"}') AS lost_id \gset
CREATE TEMP TABLE forged AS SELECT (SELECT max(id) FROM net._http_response) + 1000000 AS id;
UPDATE flowgate.deliveries SET status = 'in_flight', attempts = 1, transport = 'pg_net', claimed_at = clock_timestamp() - interval '1 second',
       transport_ref = (SELECT id FROM forged), transport_epoch = gen_random_uuid()
 WHERE id = :lost_id;
INSERT INTO net._http_response (id, status_code, content_type, content, timed_out)
SELECT id, 200, 'application/json', '{"forged": true}', false FROM forged;
SELECT flowgate.collect() \g /dev/null
SELECT is((SELECT status::text || ' ' || attempts FROM flowgate.deliveries WHERE id = :lost_id), 'pending 1',
          'a delivery in flight under an earlier pg_net epoch is not recorded with the response its request id now names');
SELECT is((SELECT last_status_code IS NULL AND response_body IS NULL FROM flowgate.deliveries WHERE id = :lost_id), true,
          'nothing of that response is kept on it');
SELECT ok((SELECT last_error LIKE 'transport error: pg_net lost the request: its tables were reset%' FROM flowgate.deliveries WHERE id = :lost_id),
          'it is recorded at once (claimed a second ago, its lease is minutes) as a lost attempt, to be sent again with its key');
DELETE FROM net._http_response WHERE id = (SELECT id FROM forged);
DELETE FROM flowgate.deliveries WHERE id = :lost_id;
SELECT flowgate.reset_setting('flowgate.retry_base_ms') \g /dev/null
SELECT flowgate.reset_setting('flowgate.retry_cap_ms') \g /dev/null

-- Leave the database as found: with pg_net installed and closed to PUBLIC, the default transport
-- (auto) would pick it for every later suite. Whatever the worker handed to pg_net meanwhile is
-- collected first,
-- so that nothing is left in flight when pg_net and its response table go.
SELECT flowgate.reset_setting('flowgate.http_transport') \g /dev/null
\if :made_pg_net
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM flowgate.deliveries WHERE status = 'in_flight' AND transport = 'pg_net');
        PERFORM flowgate.collect();
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
\endif
DELETE FROM flowgate.deliveries WHERE idempotency_key = :'key' AND status <> 'in_flight';
\if :made_pg_net
DROP EXTENSION pg_net;
\else
-- The grants as they were.
\if :net_was_open
\else
REVOKE USAGE ON SCHEMA net FROM PUBLIC;
\endif
\if :queue_was_open
GRANT SELECT ON net.http_request_queue TO PUBLIC;
\endif
\if :responses_were_open
GRANT ALL ON ALL TABLES IN SCHEMA net TO PUBLIC;
GRANT ALL ON ALL SEQUENCES IN SCHEMA net TO PUBLIC;
\endif
\endif
SELECT * FROM finish();

-- The pg_net transport. pg_net sends only after commit, so this file commits, waits for the
-- pg_net worker, and cleans up after itself. Where pg_net is not installed the whole file is
-- reported as skipped (TAP "1..0 # SKIP"), not passed.
SELECT NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_net')
    OR current_setting('shared_preload_libraries') NOT LIKE '%pg_net%' AS no_pg_net \gset
\if :no_pg_net
\echo '1..0 # SKIP pg_net is not installed and preloaded on this server (no Debian package); run this suite in the Docker image'
\quit
\endif

CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_net;
SELECT plan(5);
SELECT flowgate.set_setting('flowgate.http_transport', '"pg_net"');
SELECT flowgate.enqueue_delivery('tap', 'pgnet', 'http://127.0.0.1:5597/ok', 'tap-pgnet-1', '{"via": "pg_net"}');
SELECT is((flowgate.dispatch(10) ->> 'queued')::int, 1, 'dispatch queues the delivery with net.http_post');
SELECT ok((SELECT transport = 'pg_net' AND transport_ref IS NOT NULL FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1'),
          'the pg_net request id is kept');

-- Wait (up to 10 s) for pg_net's worker to store the response, then collect it.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT FROM net._http_response r JOIN flowgate.deliveries d ON d.transport_ref = r.id
                           WHERE d.idempotency_key = 'tap-pgnet-1');
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
-- The test server's background worker runs flowgate.collect too: whichever collects first
-- records the response, exactly once.
DO $$
BEGIN
    FOR i IN 1..50 LOOP
        EXIT WHEN (SELECT status FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1') = 'delivered';
        PERFORM flowgate.collect();
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT is((SELECT attempts FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1'), 1,
          'collect (this call or the worker''s) records the response, once');
SELECT is((SELECT status::text FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1'), 'delivered', 'delivered through pg_net');
SELECT is((SELECT response_body::jsonb ->> 'key' FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1'), 'tap-pgnet-1',
          'the Idempotency-Key header went through pg_net');

SELECT flowgate.reset_setting('flowgate.http_transport');
DELETE FROM flowgate.deliveries WHERE idempotency_key = 'tap-pgnet-1';
SELECT * FROM finish();
-- Leave the database as found: with pg_net installed, the default transport (auto) would pick
-- it for every later suite.
DROP EXTENSION pg_net;

-- Secrets where Supabase Vault is installed, as on every Supabase project: flowgate's named
-- secrets and tenant keys go to Vault, every write is idempotent by name (Vault refuses a second
-- secret of one name: unique index secrets_name_idx), deliveries read their secrets from Vault,
-- and a tenant whose create_project gets a 500 still reaches ready. Where supabase_vault is not
-- installed the whole file is reported as skipped (TAP "1..0 # SKIP"), not passed.
--
-- The outbox sends with CALL flowgate.run_outbox(), which commits between claiming, sending and
-- recording, so this file runs in autocommit and removes what it committed at the end: its
-- secrets, settings, delivery, tenant (client, jobs and their events) and the supabase_vault
-- extension when it created it. The test server's background worker runs the outbox and
-- provisioning in this database too: the checks wait until the rows have settled.
SELECT NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'supabase_vault')
    OR current_setting('shared_preload_libraries') NOT LIKE '%supabase_vault%' AS no_vault \gset
\if :no_vault
\echo '1..0 # SKIP supabase_vault is not installed and preloaded on this server (no Debian package)'
\quit
\endif

SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS pgtap;
RESET client_min_messages;
SELECT plan(23);
SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'supabase_vault') AS made_vault \gset
SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS supabase_vault CASCADE;
RESET client_min_messages;
SELECT NOT EXISTS (SELECT FROM vault.secrets WHERE name = 'supabase_access_token') AS made_access_token \gset
SELECT 'tap-vault-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS run \gset
CREATE TEMP TABLE t AS SELECT :'run'::text AS slug;

-- Wait (up to 10 s) until none of the deliveries whose key is LIKE the pattern is in flight or due.
CREATE FUNCTION pg_temp.settle(pattern text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM flowgate.deliveries
                               WHERE idempotency_key LIKE pattern
                                 AND (status = 'in_flight' OR (status = 'pending' AND next_attempt_at <= clock_timestamp())));
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
-- Run provisioning's jobs and the outbox, as pg_cron and the worker do, until the condition
-- holds (up to 10 s). Called on its own, so that each step commits.
CREATE PROCEDURE pg_temp.drive(condition text) LANGUAGE plpgsql AS $$
DECLARE done boolean; summary jsonb;
BEGIN
    FOR i IN 1..200 LOOP
        EXECUTE 'SELECT ' || condition INTO done;
        EXIT WHEN done;
        PERFORM provisioning.run_jobs();
        COMMIT;
        CALL flowgate.run_outbox(NULL, 'manual', summary);
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

-- ---- Named secrets -------------------------------------------------------------------------------
SELECT is(flowgate.set_secret('tap_vault_token', 'first-value-0001'), 'vault', 'with Vault installed, set_secret stores in Vault');
SELECT is(flowgate.set_secret('tap_vault_token', 'xoxb-flowgate-test-token-7f3a'), 'vault', 'storing the same name again is an update, not a unique violation');
SELECT is((SELECT count(*)::int FROM vault.secrets WHERE name = 'tap_vault_token'), 1, 'one Vault secret of that name');
SELECT is((SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = 'tap_vault_token'), 'xoxb-flowgate-test-token-7f3a', 'holding the new value');
SELECT is((SELECT count(*)::int FROM flowgate.secrets WHERE name = 'tap_vault_token'), 0, 'and no copy in flowgate.secrets');
SELECT ok(NOT EXISTS (SELECT FROM vault.secrets WHERE name = 'tap_vault_token' AND secret LIKE '%xoxb%'), 'Vault keeps it encrypted');

-- Vault 0.3 inserts what create_secret is given and encrypts it in a second statement: a value
-- passed there would be in the WAL (and a dead row version) in plain text. Only a placeholder
-- is; the WAL written since holds no trace of the value.
SELECT pg_current_wal_lsn() AS wal_from \gset
SELECT flowgate.set_secret('tap_vault_wal', 'WALPLAIN-' || :'run') \g /dev/null
SELECT ok(NOT EXISTS (
    SELECT FROM pg_ls_waldir() w
     WHERE w.name BETWEEN pg_walfile_name(:'wal_from') AND pg_walfile_name(pg_current_wal_lsn())
       AND position(convert_to('WALPLAIN-' || :'run', 'UTF8') IN pg_read_binary_file('pg_wal/' || w.name)) > 0),
    'a new Vault secret''s value is never written in plain text (WAL searched)');
-- A secret Vault cannot decrypt (stored under another root key: a backup restored elsewhere)
-- is replaced when it is stored again: Vault would decrypt it before an update, and fail.
UPDATE vault.secrets SET secret = encode(convert_to('not ciphertext under this key', 'UTF8'), 'base64') WHERE name = 'tap_vault_wal';
SELECT throws_ok($$SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = 'tap_vault_wal'$$, '22000', NULL,
                 '(Vault cannot decrypt it)');
SELECT is(flowgate.set_secret('tap_vault_wal', 'stored-again-0001'), 'vault', 'set_secret stores it again');
SELECT is((SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = 'tap_vault_wal'), 'stored-again-0001',
          'and Vault reads the new value');
SELECT flowgate.set_setting('flowgate.http_transport', '"native"') \g /dev/null
SELECT flowgate.enqueue_delivery('tap', 'vault', 'http://127.0.0.1:5597/auth', :'run' || '-auth-1', '{}', auth_secret => 'tap_vault_token') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || last_status_code FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-auth-1'), 'delivered 200',
          'a delivery authenticates with the secret read from Vault');
SELECT flowgate.enqueue_delivery('tap', 'vault', 'http://127.0.0.1:5597/echo-auth', :'run' || '-echo-1', '{}', auth_secret => 'tap_vault_token',
                                 max_attempts => 1) \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'run' || '-%') \g /dev/null
SELECT is((SELECT status::text || ' ' || last_status_code || ' ' || response_body FROM flowgate.deliveries WHERE idempotency_key = :'run' || '-echo-1'),
          'failed 401 {"error":"invalid_auth","received":"Bearer [secret]"}',
          'an answer that repeats the secret is stored without it (and so dumped without it)');
SELECT flowgate.set_secret('tap_vault_dropped', 'to-be-dropped-0001') \g /dev/null
SELECT is(flowgate.drop_secret('tap_vault_dropped'), true, 'drop_secret forgets a secret stored in Vault');
SELECT is((SELECT count(*)::int FROM vault.secrets WHERE name = 'tap_vault_dropped'), 0, 'it is gone from Vault, so no delivery sends it');

-- ---- Tenant keys: a 500 on create_project, then ready ------------------------------------------------
SELECT flowgate.set_setting('provisioning.organization_id', '"org-test"') \g /dev/null
SELECT flowgate.set_setting('provisioning.request_timeout_ms', '1000') \g /dev/null
SELECT flowgate.set_secret('supabase_access_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT flowgate.set_setting('provisioning.management_api_url', '"http://127.0.0.1:5597/mgmt/flaky"') \g /dev/null
SELECT provisioning.enqueue_client((SELECT slug FROM t), 'Vault Tenant') \g /dev/null
CALL pg_temp.drive($$EXISTS (SELECT FROM provisioning.job_events e JOIN provisioning.client_provisioning_jobs j USING (job_id)
                               JOIN provisioning.clients c USING (client_id)
                              WHERE c.slug = (SELECT slug FROM t) AND e.event_type = 'attempt_failed')$$);
SELECT is((SELECT e.to_status || ' ' || (e.payload ->> 'status_code') FROM provisioning.job_events e
             JOIN provisioning.client_provisioning_jobs j USING (job_id) JOIN provisioning.clients c USING (client_id)
            WHERE c.slug = (SELECT slug FROM t) AND e.event_type = 'attempt_failed' ORDER BY e.id LIMIT 1),
          'queued 500', 'create_project got a 500: the job waits for its retry');
-- Do not wait out the back-off.
UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now()
 WHERE status = 'queued' AND client_id = (SELECT client_id FROM provisioning.clients WHERE slug = (SELECT slug FROM t));
CALL pg_temp.drive($$(SELECT provisioning_status IN ('ready', 'failed') FROM provisioning.clients WHERE slug = (SELECT slug FROM t))$$);
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = (SELECT slug FROM t)), 'ready',
          'the retry stores the database password again (updated in Vault, not created twice) and the tenant is ready');
SELECT is((SELECT key_storage FROM provisioning.clients WHERE slug = (SELECT slug FROM t)), 'vault', 'its keys are in Vault');
SELECT is((SELECT count(*)::int FROM vault.secrets WHERE name LIKE 'provisioning/' || (SELECT slug FROM t) || '/%'), 3,
          'one Vault secret each for db_pass, anon_key and service_key');
SELECT ok((SELECT anon_key_encrypted IS NULL AND service_key_encrypted IS NULL AND db_pass_encrypted IS NULL
             FROM provisioning.clients WHERE slug = (SELECT slug FROM t)), 'no pgcrypto copy');
SELECT is((SELECT anon_key FROM provisioning.tenant_keys((SELECT client_id FROM provisioning.clients WHERE slug = (SELECT slug FROM t)))),
          'eyJhbGciOiJIUzI1NiJ9.anon-' || (SELECT project_ref FROM provisioning.clients WHERE slug = (SELECT slug FROM t)) || '.fgtestsig',
          'and read back from Vault as the API returned them');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.deliveries WHERE body::text LIKE '%eyJhbGciOiJIUzI1NiJ9.anon-%' OR response_body LIKE '%eyJhbGciOiJIUzI1NiJ9%'),
          'no key in any delivery');
-- Keys stored across both storages (the database password with pgcrypto before Vault was
-- installed, the API keys in Vault after): each is read where it is, whatever key_storage says.
UPDATE provisioning.clients
   SET db_pass_secret_id = NULL,
       db_pass_encrypted = pgp_sym_encrypt('pgcrypto-era-db-pass-0001', current_setting('flowgate.tenant_key_passphrase'), 'cipher-algo=aes256')
 WHERE slug = (SELECT slug FROM t);
SELECT is((SELECT k.db_pass || ' ' || (k.anon_key LIKE '%.fgtestsig') FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k
            WHERE c.slug = (SELECT slug FROM t) AND c.key_storage = 'vault'),
          'pgcrypto-era-db-pass-0001 true', 'a key stored with pgcrypto before Vault reads back beside the ones in Vault');
UPDATE provisioning.clients SET key_storage = 'pgcrypto' WHERE slug = (SELECT slug FROM t);
SELECT is((SELECT k.db_pass || ' ' || (k.anon_key LIKE '%.fgtestsig') FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k
            WHERE c.slug = (SELECT slug FROM t)),
          'pgcrypto-era-db-pass-0001 true', 'and so do the Vault ones when key_storage names pgcrypto');

-- ---- Leave the database as found ------------------------------------------------------------------
SELECT flowgate.reset_setting(k) FROM unnest(ARRAY['flowgate.http_transport', 'provisioning.organization_id', 'provisioning.request_timeout_ms',
                                                   'provisioning.management_api_url']) k \g /dev/null
CREATE TEMP TABLE tap_jobs AS
SELECT job_id FROM provisioning.client_provisioning_jobs WHERE client_id = (SELECT client_id FROM provisioning.clients WHERE slug = (SELECT slug FROM t));
DELETE FROM flowgate.deliveries
 WHERE idempotency_key LIKE :'run' || '-%'
    OR (owner_module = 'provisioning' AND split_part(owner_id, ':', 1) IN (SELECT job_id::text FROM tap_jobs));
-- The job history is append-only (its trigger refuses DELETE): removed with triggers off, for
-- this session only.
SET session_replication_role = replica;
DELETE FROM provisioning.job_events WHERE job_id IN (SELECT job_id FROM tap_jobs);
DELETE FROM provisioning.client_provisioning_jobs WHERE job_id IN (SELECT job_id FROM tap_jobs);
DELETE FROM provisioning.clients WHERE slug = (SELECT slug FROM t);
RESET session_replication_role;
DELETE FROM vault.secrets WHERE name IN ('tap_vault_token', 'tap_vault_wal') OR name LIKE 'provisioning/' || :'run' || '/%';
\if :made_access_token
DELETE FROM vault.secrets WHERE name = 'supabase_access_token';
\endif
\if :made_vault
DROP EXTENSION supabase_vault;
\endif

SELECT * FROM finish();

-- Secrets where Supabase Vault is installed, as on every Supabase project: flowgate's named
-- secrets and tenant keys go to Vault, every write is idempotent by name (Vault refuses a second
-- secret of one name: unique index secrets_name_idx), deliveries read their secrets from Vault,
-- and a tenant whose create_project gets a 500 still reaches ready. Where supabase_vault is not
-- installed the whole file is reported as skipped (TAP "1..0 # SKIP"), not passed.
SELECT NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'supabase_vault')
    OR current_setting('shared_preload_libraries') NOT LIKE '%supabase_vault%' AS no_vault \gset
\if :no_vault
\echo '1..0 # SKIP supabase_vault is not installed and preloaded on this server (no Debian package)'
\quit
\endif

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(14);
SET LOCAL client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS supabase_vault CASCADE;
RESET client_min_messages;

-- ---- Named secrets -------------------------------------------------------------------------------
SELECT is(flowgate.set_secret('tap_vault_token', 'first-value-0001'), 'vault', 'with Vault installed, set_secret stores in Vault');
SELECT is(flowgate.set_secret('tap_vault_token', 'xoxb-flowgate-test-token-7f3a'), 'vault', 'storing the same name again is an update, not a unique violation');
SELECT is((SELECT count(*)::int FROM vault.secrets WHERE name = 'tap_vault_token'), 1, 'one Vault secret of that name');
SELECT is((SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = 'tap_vault_token'), 'xoxb-flowgate-test-token-7f3a', 'holding the new value');
SELECT is((SELECT count(*)::int FROM flowgate.secrets WHERE name = 'tap_vault_token'), 0, 'and no copy in flowgate.secrets');
SELECT ok(NOT EXISTS (SELECT FROM vault.secrets WHERE name = 'tap_vault_token' AND secret LIKE '%xoxb%'), 'Vault keeps it encrypted');

SELECT flowgate.set_setting('flowgate.http_transport', '"native"') \g /dev/null
SELECT flowgate.enqueue_delivery('tap', 'vault', 'http://127.0.0.1:5597/auth', 'tap-vault-auth-1', '{}', auth_secret => 'tap_vault_token') \g /dev/null
SELECT is(flowgate.dispatch_ids(ARRAY[(SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'tap-vault-auth-1')]) ->> 'delivered', '1',
          'a delivery authenticates with the secret read from Vault');

-- ---- Tenant keys: a 500 on create_project, then ready ------------------------------------------------
SELECT flowgate.set_setting('provisioning.organization_id', '"org-test"') \g /dev/null
SELECT flowgate.set_setting('provisioning.request_timeout_ms', '1000') \g /dev/null
SELECT flowgate.set_secret('supabase_access_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT flowgate.set_setting('provisioning.management_api_url', '"http://127.0.0.1:5597/mgmt/flaky"') \g /dev/null
CREATE TEMP TABLE t AS SELECT 'tap-vault-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS slug;
SELECT provisioning.enqueue_client((SELECT slug FROM t), 'Vault Tenant') \g /dev/null
SELECT provisioning.run_jobs() \g /dev/null
SELECT is((SELECT j.status || ' ' || j.last_status_code FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c USING (client_id)
            WHERE c.slug = (SELECT slug FROM t)), 'queued 500', 'create_project got a 500: the job waits for its retry');
UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now() WHERE status = 'queued';
SELECT provisioning.run_jobs() \g /dev/null
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

SELECT * FROM finish();
ROLLBACK;

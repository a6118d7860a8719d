-- Tenant provisioning end to end against the Management API played by
-- flowgate-testd on 127.0.0.1:5597 (/mgmt/<mode>/v1/...), every call through the outbox:
-- the happy path to ready, a 500 then success, a 429, a 401 fixed by new credentials and an
-- operator retry, a timeout whose project is adopted instead of created twice, a failed
-- migration resumed after the fix, and tenant keys never in plain text anywhere.
--
-- provisioning.run_jobs() only claims due jobs and enqueues each one's first request;
-- CALL flowgate.run_outbox() sends with no transaction open and the response handler chains
-- the next step (and queues the next job). A CALL cannot run inside a transaction block, so
-- this file runs in autocommit, and the background worker (run_jobs and the outbox every
-- 200 ms) may move committed jobs on too: pg_temp.run_jobs() below runs jobs and the outbox
-- until this file's jobs have settled, back-offs are long (a job waiting to be retried stays
-- put until pg_temp.due() makes it due), and checks of what a call did before anything is
-- sent run in the transaction that made the call. The end removes what the file created.
SELECT plan(61);
SET client_min_messages = error;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
RESET client_min_messages;
-- Tenant keys are encrypted with the server's flowgate.tenant_key_passphrase: the worker's
-- handlers store them with it, so this session uses the same one (its own only on a server
-- without one).
SELECT set_config('flowgate.tenant_key_passphrase', 'tap-passphrase-0123456789abcdef', false)
 WHERE coalesce(current_setting('flowgate.tenant_key_passphrase', true), '') = '' \g /dev/null
SELECT flowgate.set_setting('provisioning.organization_id', '"org-test"') \g /dev/null
-- Long enough for a loaded machine's answers, short of the slow mode's 3 s.
SELECT flowgate.set_setting('provisioning.request_timeout_ms', '2000') \g /dev/null
SELECT flowgate.set_setting('provisioning.retry_base_seconds', '3600') \g /dev/null
SELECT flowgate.set_setting('provisioning.retry_cap_seconds', '86400') \g /dev/null
SELECT flowgate.set_secret('supabase_access_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
-- The migration set is global: kept aside and put back at the end.
CREATE TEMP TABLE saved_migrations AS SELECT version, name, sql, created_at FROM provisioning.migrations;
DELETE FROM provisioning.migrations \g /dev/null
INSERT INTO provisioning.migrations (version, name, sql) VALUES
  (1, 'tenant_schema', 'CREATE SCHEMA IF NOT EXISTS app'),
  (2, 'tenant_tables', 'CREATE TABLE IF NOT EXISTS app.notes (id bigint PRIMARY KEY, body text)') \g /dev/null

-- Each run of the suite names its tenants afresh (the fake API remembers projects by name).
CREATE TEMP TABLE t AS SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 8) AS run;
CREATE FUNCTION pg_temp.slug(what text) RETURNS text LANGUAGE sql AS $$ SELECT 'tap-' || what || '-' || (SELECT run FROM t) $$;
CREATE FUNCTION pg_temp.client(what text) RETURNS uuid LANGUAGE sql AS $$ SELECT client_id FROM provisioning.clients WHERE slug = pg_temp.slug(what) $$;
CREATE FUNCTION pg_temp.api(mode text) RETURNS void LANGUAGE sql AS $$
    SELECT flowgate.set_setting('provisioning.management_api_url', to_jsonb('http://127.0.0.1:5597/mgmt/' || mode)); $$;
-- This run's jobs.
CREATE FUNCTION pg_temp.jobs() RETURNS SETOF provisioning.client_provisioning_jobs LANGUAGE sql AS $$
    SELECT j.* FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c USING (client_id)
     WHERE c.slug LIKE 'tap-%-' || (SELECT run FROM t) $$;
-- Make this run's waiting jobs due now (the test does not wait out the back-off).
CREATE FUNCTION pg_temp.due() RETURNS void LANGUAGE sql AS $$
    UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now() WHERE status = 'queued' AND job_id IN (SELECT job_id FROM pg_temp.jobs()); $$;
-- Nothing of this run is being sent or due to be sent, and no job is running (waiting for a reply).
CREATE FUNCTION pg_temp.quiet() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id LIKE j.job_id || ':%'
                        WHERE d.owner_module = 'provisioning'
                          AND (d.status = 'in_flight' OR (d.status = 'pending' AND d.next_attempt_at <= clock_timestamp())))
       AND NOT EXISTS (SELECT FROM pg_temp.jobs() WHERE status = 'running') $$;
-- Until quiet (the worker may be sending this run's deliveries).
CREATE FUNCTION pg_temp.settle() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        IF pg_temp.quiet() THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE WARNING 'provisioning deliveries or jobs of this run still busy after 5 s';
    RETURN false;
END $$;
-- What provisioning.run_jobs() did before the outbox existed, as the schedule does it now:
-- start due jobs, commit, CALL flowgate.run_outbox() (whose rounds send each job's steps as
-- the handler chains them), and again until this run's jobs are quiet and none is due.
CREATE PROCEDURE pg_temp.run_jobs() LANGUAGE plpgsql AS $$
DECLARE
    summary jsonb;
BEGIN
    FOR i IN 1..200 LOOP
        PERFORM provisioning.run_jobs();
        COMMIT;
        CALL flowgate.run_outbox(NULL, 'manual', summary);
        IF pg_temp.quiet() AND NOT EXISTS (SELECT FROM pg_temp.jobs() WHERE status = 'queued' AND next_attempt_at <= clock_timestamp()) THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE WARNING 'provisioning jobs of this run still busy after 200 rounds';
END $$;
-- This run's clients, jobs and deliveries; their history is append-only: removed with its
-- triggers off (which only a superuser can do).
CREATE FUNCTION pg_temp.forget_clients() RETURNS void LANGUAGE plpgsql SET session_replication_role = replica AS $$
DECLARE
    jobs uuid[] := ARRAY(SELECT job_id FROM pg_temp.jobs());
BEGIN
    DELETE FROM flowgate.deliveries d WHERE d.owner_module = 'provisioning' AND split_part(d.owner_id, ':', 1) = ANY (jobs::text[]);
    DELETE FROM provisioning.job_events WHERE job_id = ANY (jobs);
    DELETE FROM provisioning.client_provisioning_jobs WHERE job_id = ANY (jobs);
    DELETE FROM provisioning.clients WHERE slug LIKE 'tap-%-' || (SELECT run FROM t);
END $$;

-- ---- Happy path ------------------------------------------------------------------------------------
SELECT pg_temp.api('ok') \g /dev/null
BEGIN;  -- (until it commits, the background worker cannot start the job or send its request)
SELECT provisioning.enqueue_client(pg_temp.slug('happy'), 'Happy Tenant', 'eu-west-1', 'pro') \g /dev/null
SELECT is((SELECT array_agg(s ->> 'job_type') FROM jsonb_array_elements(provisioning.run_jobs() -> 'started') s
            WHERE (s ->> 'job_id')::uuid IN (SELECT job_id FROM pg_temp.jobs())), ARRAY['create_project'],
          'run_jobs starts create_project');
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 3) || ' ' || d.status || ' ' || d.attempts, ',')
             FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id LIKE j.job_id || ':%' WHERE d.owner_module = 'provisioning'),
          'create pending 0', 'it enqueues the job''s first request and sends nothing itself');
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(job_type || CASE WHEN job_type = 'create_project' THEN ' ' || status ELSE '' END, ',' ORDER BY created_at) FROM pg_temp.jobs()),
          'create_project succeeded,schema_sync',
          'the outbox sends create, then the api-keys call the handler chains; the job succeeds and queues schema_sync');
-- (When the create did not succeed, say why: the job's error and its deliveries' outcomes.)
SELECT diag('happy path: ' || string_agg(x, '; '))
  FROM (SELECT j.job_type || ' ' || j.status || ': ' || coalesce(j.last_error, '-') AS x FROM pg_temp.jobs() j WHERE j.job_type = 'create_project' AND j.status <> 'succeeded'
        UNION ALL
        SELECT 'delivery ' || split_part(d.owner_id, ':', 3) || ' ' || d.status || ' ' || d.attempts || ' ' || coalesce(d.transport, '-') || ': ' || coalesce(d.last_error, '-')
          FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id LIKE j.job_id || ':%'
         WHERE d.owner_module = 'provisioning' AND j.job_type = 'create_project' AND j.status <> 'succeeded') y
HAVING count(*) > 0;
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 'ready', 'run_jobs starts schema_sync, the outbox sends its migrations: the client is ready');
SELECT ok((SELECT project_ref ~ '^[a-z0-9]{20}$' FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 'with its project_ref');
SELECT is((SELECT additional_settings #>> '{supabase,region}' FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 'eu-west-1',
          'region (and plan, organization) recorded in additional_settings');
SELECT is((SELECT schema_version FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 2, 'both migrations applied');
SELECT is((SELECT key_storage || ' ' || (anon_key_encrypted IS NOT NULL) || ' ' || (service_key_encrypted IS NOT NULL) || ' ' || (db_pass_encrypted IS NOT NULL)
             FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 'pgcrypto true true true', 'the keys and db password are stored encrypted');
SELECT is((SELECT anon_key FROM provisioning.tenant_keys(pg_temp.client('happy'))),
          'eyJhbGciOiJIUzI1NiJ9.anon-' || (SELECT project_ref FROM provisioning.clients WHERE slug = pg_temp.slug('happy')) || '.fgtestsig',
          'and decrypt to what the API returned');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('happy') AND d.status = 'delivered'), 4, 'four Management API calls, all delivered: create, api-keys, 2 migrations');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('happy') AND d.sensitive AND d.body = '{"redacted": true}' AND d.response_body IS NULL), 2,
          'the create (db_pass) and api-keys deliveries keep neither body');
SELECT is((SELECT d.body_secrets FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('happy') AND d.url LIKE '%/v1/projects'),
          jsonb_build_object('db_pass', 'provisioning.' || pg_temp.slug('happy') || '.db_pass'),
          'the create request took db_pass from a secret (the test API answers 400 without one)');
CREATE FUNCTION pg_temp.secrets_named(n text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE c int;
BEGIN
    SELECT count(*) INTO c FROM flowgate.secrets WHERE name = n;
    IF to_regclass('vault.secrets') IS NOT NULL THEN
        EXECUTE 'SELECT $1 + count(*)::int FROM vault.secrets WHERE name = $2' INTO c USING c, n;
    END IF;
    RETURN c;
END $$;
SELECT is(pg_temp.secrets_named('provisioning.' || pg_temp.slug('happy') || '.db_pass'), 0,
          'that named copy of the password is dropped once the project exists (it stays in the tenant keys)');
-- A create request waiting to be sent: its row holds the secret's name, not the password.
CREATE FUNCTION pg_temp.pending_create() RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE r jsonb;
BEGIN
    BEGIN
        PERFORM provisioning.enqueue_client(pg_temp.slug('sealed'), 'Sealed Tenant');
        PERFORM provisioning.run_jobs();
        SELECT jsonb_build_object('body', d.body, 'body_secrets', d.body_secrets, 'status', d.status::text,
                                  'pass', (SELECT k.db_pass FROM provisioning.tenant_keys(pg_temp.client('sealed')) k))
          INTO r
          FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
         WHERE j.client_id = pg_temp.client('sealed');
        RAISE EXCEPTION 'roll back' USING ERRCODE = 'P0001';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN r;
END $$;
CREATE TEMP TABLE sealed AS SELECT pg_temp.pending_create() AS r;
SELECT is((SELECT r ->> 'status' FROM sealed), 'pending', 'a create request is enqueued');
SELECT ok((SELECT NOT (r -> 'body' ? 'db_pass') AND length(r ->> 'pass') = 32 AND strpos((r - 'pass')::text, r ->> 'pass') = 0 FROM sealed),
          'its row holds no db_pass: the 32-character password is in the tenant keys and its secret only');

-- ---- 500, then success -------------------------------------------------------------------------------
SELECT pg_temp.api('flaky') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('flaky'), 'Flaky Tenant') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT status || ' ' || attempts || ' ' || last_status_code FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('flaky')),
          'queued 1 500', 'a 500 sends the job back to the queue after attempt 1');
SELECT alike((SELECT last_error FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('flaky')), 'create: HTTP 500%Internal server error%',
             'with the step, status and API message as last_error');
SELECT is((SELECT provisioning_status || ': ' || left(provisioning_error, 16) FROM provisioning.clients WHERE slug = pg_temp.slug('flaky')),
          'creating_project: create: HTTP 500', 'reflected on the client, which keeps its stage');
SELECT ok((SELECT next_attempt_at > now() FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('flaky')), 'after a back-off');
SELECT pg_temp.due() \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = pg_temp.slug('flaky')), 'ready', 'the retry gets through to ready');
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3), ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('flaky') AND j.job_type = 'create_project'),
          '1:create,2:lookup,2:create,2:api_keys', 'attempt 2 looks the project up before creating it');
SELECT is((SELECT count(*) || ' ' || count(DISTINCT d.wire_key) || ' ' || count(DISTINCT d.body::text) || ' ' || (min(d.wire_key) ~ ('^provisioning:' || pg_temp.client('flaky') || ':create:[0-9a-f]{16}$'))
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('flaky') AND split_part(d.owner_id, ':', 3) = 'create'),
          '2 1 1 true',
          'both creates are one request: one Idempotency-Key for the client and body, the same body (the password kept from the first)');

-- ---- A project of the client's name in another organization is someone else's ----------------------------
-- The token reaches both organizations: the lookup after a failed create finds the other
-- organization's project of that name, and must create this client's own, not adopt it (its
-- keys and database would become the tenant's).
-- (The other organization's project is made on the fake API directly, by the server's curl.)
CREATE TEMP TABLE twin_elsewhere (answer text);
DO $$ BEGIN
    EXECUTE format('COPY twin_elsewhere FROM PROGRAM %L',
        format('curl -s -X POST -H ''Authorization: Bearer another-token'' -H ''Content-Type: application/json'' '
               '-d ''{"name":"%s","organization_id":"org-other","db_pass":"p","region":"us-east-1"}'' '
               'http://127.0.0.1:5597/mgmt/ok/v1/projects', pg_temp.slug('twin')));
END $$;
SELECT pg_temp.api('flaky') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('twin'), 'Twin Here') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT pg_temp.due() \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3), ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('twin') AND j.job_type = 'create_project'),
          '1:create,2:lookup,2:create,2:api_keys', 'a project of the same name in another organization is not adopted: the client gets its own');
SELECT is((SELECT answer::jsonb ->> 'organization_id' FROM twin_elsewhere), 'org-other', '(the other organization''s project was there)');

-- ---- An answer after the attempt's lease ran out (its request waited in the outbox) --------------------
-- The answer is progress: the lease runs again from it, the attempt goes on and finishes, and no
-- second attempt sends its steps again. (Scheduled claims are held off meanwhile by an empty
-- organization id, so nothing reclaims the job before its answers come.)
SELECT pg_temp.api('ok') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('lapsed'), 'Lapsed Tenant') \g /dev/null
BEGIN;
SELECT provisioning.run_jobs() \g /dev/null
UPDATE provisioning.client_provisioning_jobs SET lease_expires_at = now() - interval '1 second'
 WHERE client_id = pg_temp.client('lapsed') AND job_type = 'create_project';
SELECT flowgate.set_setting('provisioning.organization_id', '""') \g /dev/null
COMMIT;
CALL flowgate.run_outbox() \gset
CALL flowgate.run_outbox() \gset
CALL flowgate.run_outbox() \gset
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM provisioning.client_provisioning_jobs
                               WHERE client_id = pg_temp.client('lapsed') AND job_type = 'create_project' AND status = 'running');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT flowgate.set_setting('provisioning.organization_id', '"org-test"') \g /dev/null
SELECT is((SELECT status || ' ' || attempts FROM provisioning.client_provisioning_jobs
            WHERE client_id = pg_temp.client('lapsed') AND job_type = 'create_project'),
          'succeeded 1', 'an answer after the lease ran out renews it: the attempt finishes, none is sent twice');
CALL pg_temp.run_jobs() \g /dev/null

-- ---- 429 ---------------------------------------------------------------------------------------------
SELECT pg_temp.api('ratelimit') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('busy'), 'Busy Tenant') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT status || ' ' || last_status_code FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('busy')),
          'queued 429', 'a 429 is transient: queued again');
SELECT pg_temp.due() \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = pg_temp.slug('busy')), 'ready', 'and gets through once the limit passes');

-- ---- 401, credentials fixed, operator retry -----------------------------------------------------------------
SELECT pg_temp.api('auth') \g /dev/null
SELECT flowgate.set_secret('supabase_access_token', 'sbp_expired_token') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('creds'), 'Creds Tenant') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT status || ' ' || attempts || ' ' || last_status_code FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('creds')),
          'failed 1 401', 'a 401 fails the job at once: no retry');
SELECT is((SELECT count(*)::int FROM flowgate.secrets WHERE name = 'provisioning.' || pg_temp.slug('creds') || '.db_pass'), 0,
          'the failed client keeps no named copy of its database password (only its tenant keys do)');
SELECT is((SELECT provisioning_error FROM provisioning.clients WHERE slug = pg_temp.slug('creds')),
          'create: HTTP 401 is a permanent error (not retried) (Unauthorized)',
          'the client is failed with the reason, saying "not retried" once');
SELECT is((SELECT slug FROM provisioning.v_admin_diagnostics WHERE provisioning_status = 'failed' AND slug LIKE 'tap-%-' || (SELECT run FROM t)), pg_temp.slug('creds'),
          'and listed by v_admin_diagnostics');
SELECT flowgate.set_secret('supabase_access_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT provisioning.retry(pg_temp.client('creds')) \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status || ' ' || coalesce(provisioning_error, '-') FROM provisioning.clients WHERE slug = pg_temp.slug('creds')), 'ready -',
          'after the token is fixed, provisioning.retry gets it to ready');
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3), ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('creds') AND j.job_type = 'create_project'),
          '1:create,1:lookup,1:create,1:api_keys',
          'the retry (attempts numbered from 1 again) looks the project up before creating it, as any attempt after a create does');
SELECT throws_ok(format('SELECT provisioning.retry(%L::uuid)', pg_temp.client('creds')), '55000',
                 'retry is not allowed in state ready (no job failed or waiting to retry)',
                 'retrying a ready client says what it is (the hint points at sync_schema)');

-- ---- Timeout: the project was created anyway; the retry adopts it ----------------------------------------------
SELECT pg_temp.api('slow') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('slow'), 'Slow Tenant') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT alike((SELECT status || ' ' || last_error FROM provisioning.client_provisioning_jobs WHERE client_id = pg_temp.client('slow')),
             'queued create: timed out%', 'a timeout is transient');
SELECT pg_temp.api('ok') \g /dev/null
SELECT pg_temp.due() \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = pg_temp.slug('slow')), 'ready', 'the retry finishes');
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3), ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('slow') AND j.job_type = 'create_project'),
          '1:create,2:lookup,2:api_keys', 'by adopting the project the timed-out create made, never creating it twice');

-- ---- A lease that ran out with the create still waiting to be sent ----------------------------------------------
-- (The create is held back an hour, as a paused flow or a stalled outbox would hold it.)
SELECT pg_temp.api('ok') \g /dev/null
BEGIN;
SELECT provisioning.enqueue_client(pg_temp.slug('stall'), 'Stalled Tenant') \g /dev/null
SELECT provisioning.run_jobs() \g /dev/null
UPDATE flowgate.deliveries d SET next_attempt_at = now() + interval '1 hour'
  FROM pg_temp.jobs() j WHERE d.owner_id LIKE j.job_id || ':%' AND j.client_id = pg_temp.client('stall') \g /dev/null
UPDATE provisioning.client_provisioning_jobs SET lease_expires_at = now() - interval '1 second'
 WHERE client_id = pg_temp.client('stall') \g /dev/null
COMMIT;
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3) || ' ' || d.status, ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('stall') AND j.job_type = 'create_project'),
          '1:create failed,2:lookup delivered,2:create delivered,2:api_keys delivered',
          'the next attempt drops the waiting create of the lapsed one and looks up before creating: one project');
SELECT is((SELECT d.last_error FROM flowgate.deliveries d JOIN provisioning.client_provisioning_jobs j ON d.owner_id = j.job_id || ':1:create'
            WHERE j.client_id = pg_temp.client('stall')),
          'superseded: the attempt it belonged to ended before it was sent', 'saying why it was never sent');

-- ---- An answer from before an operator reset --------------------------------------------------------------------
-- Attempt 1's create is being sent (a runner holds it) when the job ends; the operator retries,
-- and the new attempt is numbered 1 again. The old create's answer then comes: it is not the
-- running attempt's (that one was enqueued before its claim), so it moves no step on (the
-- project it names is only adopted, as a late create's is).
SELECT pg_temp.api('ok') \g /dev/null
BEGIN;
SELECT provisioning.enqueue_client(pg_temp.slug('rerun'), 'Rerun Tenant') \g /dev/null
SELECT provisioning.run_jobs() \g /dev/null
UPDATE flowgate.deliveries d SET status = 'in_flight', attempts = 1, claimed_at = clock_timestamp(), next_attempt_at = now() + interval '1 hour'
  FROM pg_temp.jobs() j WHERE d.owner_id = j.job_id || ':1:create' AND j.client_id = pg_temp.client('rerun') \g /dev/null
COMMIT;
SELECT d.id AS stale_create FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id = j.job_id || ':1:create'
 WHERE j.client_id = pg_temp.client('rerun') \gset
-- The attempt ended (its lease ran out and its attempts with it), as the reducer would leave it.
UPDATE provisioning.client_provisioning_jobs
   SET status = 'failed', claimed_at = NULL, claimed_by = NULL, lease_expires_at = NULL, finished_at = now()
 WHERE client_id = pg_temp.client('rerun') \g /dev/null
SELECT provisioning.retry(pg_temp.client('rerun')) \g /dev/null
BEGIN;
SELECT provisioning.run_jobs() \g /dev/null
UPDATE flowgate.deliveries d SET next_attempt_at = now() + interval '1 hour'
  FROM pg_temp.jobs() j WHERE d.owner_id LIKE j.job_id || ':1:%' AND d.status = 'pending' AND j.client_id = pg_temp.client('rerun') \g /dev/null
COMMIT;
SELECT flowgate.record_attempt(:stale_create, 201, NULL,
    '{"id": "rerunstaleprojectref", "ref": "rerunstaleprojectref", "organization_id": "org-test", "name": "' || pg_temp.slug('rerun')
    || '", "region": "us-east-1", "created_at": "2026-11-23T12:00:00Z", "status": "COMING_UP"}', 'application/json', NULL, NULL) \g /dev/null
SELECT is((SELECT string_agg(split_part(d.owner_id, ':', 2) || ':' || split_part(d.owner_id, ':', 3) || ' ' || d.status, ',' ORDER BY d.id)
             FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id LIKE j.job_id || ':%' WHERE j.client_id = pg_temp.client('rerun')),
          '1:create delivered,1:lookup pending',
          'a create answered after an operator reset moves the new attempt 1 no step on (no api_keys)');
UPDATE flowgate.deliveries d SET next_attempt_at = now()
  FROM pg_temp.jobs() j WHERE d.owner_id LIKE j.job_id || ':%' AND d.status = 'pending' AND j.client_id = pg_temp.client('rerun') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = pg_temp.slug('rerun')), 'ready', 'the new attempt finishes');

-- ---- A failed migration, fixed, resumed where it stopped ------------------------------------------------------
DELETE FROM provisioning.migrations \g /dev/null
INSERT INTO provisioning.migrations (version, name, sql) VALUES
  (1, 'tenant_schema', 'CREATE SCHEMA IF NOT EXISTS app'),
  (2, 'broken', 'CREATE TABLE app.flowgate_test_fail ('),
  (3, 'tenant_index', 'CREATE INDEX IF NOT EXISTS notes_body ON app.notes (body)') \g /dev/null
SELECT provisioning.enqueue_client(pg_temp.slug('mig'), 'Migration Tenant') \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status || ' v' || schema_version FROM provisioning.clients WHERE slug = pg_temp.slug('mig')), 'failed v1',
          'migration 2 fails (400, not retried); migration 1 stays applied');
SELECT alike((SELECT provisioning_error FROM provisioning.clients WHERE slug = pg_temp.slug('mig')), 'migration 2: %syntax error%',
             'the error names the migration and the database''s message');
UPDATE provisioning.migrations SET sql = 'CREATE TABLE IF NOT EXISTS app.notes (id bigint PRIMARY KEY, body text)' WHERE version = 2;
SELECT provisioning.retry(pg_temp.client('mig')) \g /dev/null
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status || ' v' || schema_version FROM provisioning.clients WHERE slug = pg_temp.slug('mig')), 'ready v3',
          'after the fix the retry resumes at migration 2 and finishes');
SELECT is((SELECT string_agg(split_part(wire_key, ':', 4) || '=' || cnt, ',' ORDER BY split_part(wire_key, ':', 4))
             FROM (SELECT wire_key, count(*) AS cnt FROM flowgate.deliveries
                    WHERE wire_key LIKE 'provisioning:' || pg_temp.client('mig') || ':migration:%' GROUP BY wire_key) x),
          '1=1,2=2,3=1', 'migration 1 was sent once, 2 twice (failed, fixed), 3 once');

-- ---- A migration added later reaches a tenant that was already ready ------------------------------------------
SELECT pg_temp.api('ok') \g /dev/null
BEGIN;  -- (the worker must not run the queued job between the two calls)
SELECT is(provisioning.sync_schema(pg_temp.slug('happy')) -> 'queued', jsonb_build_array(pg_temp.client('happy')::text),
          'sync_schema queues the ready tenant that is behind the newest migration (v2 of 3)');
SELECT is(provisioning.sync_schema(pg_temp.slug('happy')) -> 'queued', '[]'::jsonb, 'once: not again while its job is open');
COMMIT;
CALL pg_temp.run_jobs() \g /dev/null
SELECT is((SELECT provisioning_status || ' v' || schema_version FROM provisioning.clients WHERE slug = pg_temp.slug('happy')), 'ready v3',
          'the next run applies migration 3 and the tenant is ready again');
SELECT throws_ok($$SELECT provisioning.sync_schema('no-such-tenant')$$, 'P0002', NULL, 'an unknown client is P0002');

-- ---- Tenant secrets never in plain text ---------------------------------------------------------------------
CREATE TEMP TABLE secrets AS
SELECT k.anon_key AS s FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k WHERE c.slug LIKE 'tap-%-' || (SELECT run FROM t)
UNION ALL SELECT k.service_key FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k WHERE c.slug LIKE 'tap-%-' || (SELECT run FROM t)
UNION ALL SELECT k.db_pass FROM provisioning.clients c, provisioning.tenant_keys(c.client_id) k WHERE c.slug LIKE 'tap-%-' || (SELECT run FROM t);
SELECT is((SELECT count(*)::int FROM secrets WHERE s IS NOT NULL), 30, 'ten tenants, three secrets each');
CREATE FUNCTION pg_temp.plain_text_hits() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    n bigint := 0;
    hits bigint;
BEGIN
    FOR rel IN SELECT c.oid FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                WHERE c.relkind = 'r' AND ns.nspname NOT IN ('pg_catalog', 'information_schema') AND ns.nspname NOT LIKE 'pg_temp%'
                  AND ns.nspname NOT LIKE 'pg_toast%' LOOP
        EXECUTE format('SELECT count(*) FROM %s x WHERE EXISTS (SELECT 1 FROM secrets WHERE strpos(x::text, secrets.s) > 0)', rel) INTO hits;
        n := n + hits;
    END LOOP;
    RETURN n;
END $$;
SELECT is(pg_temp.plain_text_hits(), 0::bigint, 'no table of any schema holds a tenant key or db password in plain text');
SELECT is((SELECT count(*)::int FROM secrets WHERE strpos(coalesce(pg_read_file(current_setting('data_directory') || '/../log', 0, 50000000, true), ''), s) > 0), 0,
          'nor does the server log');
SELECT ok((pg_stat_file(current_setting('data_directory') || '/../log', true)).size > 0, '(the server log exists and was read)');
SELECT is((SELECT count(*)::int FROM secrets WHERE strpos((SELECT string_agg(coalesce(last_error, '') || coalesce(provisioning_error, ''), ' ')
             FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c USING (client_id)), s) > 0), 0, 'nor any recorded error');
-- Without the passphrase, nothing can be stored or read. In one transaction: the job must be
-- started here, without it, not by the worker (which has the server's).
BEGIN;
SET LOCAL flowgate.tenant_key_passphrase = '';
SELECT throws_ok(format($$SELECT * FROM provisioning.tenant_keys(%L)$$, pg_temp.client('happy')), '0A000', NULL,
                 'without flowgate.tenant_key_passphrase the keys cannot be read');
SAVEPOINT wrong_passphrase;
SET LOCAL flowgate.tenant_key_passphrase = 'another-servers-passphrase-0123';
SELECT throws_like(format($$SELECT * FROM provisioning.tenant_keys(%L)$$, pg_temp.client('happy')),
                   '%tenant keys of client ' || pg_temp.client('happy') || '%flowgate.tenant_key_passphrase%',
                   'under another passphrase (a backup restored elsewhere) the error names the client and what to restore');
ROLLBACK TO SAVEPOINT wrong_passphrase;
SELECT provisioning.enqueue_client(pg_temp.slug('nokey'), 'No Key Tenant') \g /dev/null
SELECT provisioning.run_jobs() \g /dev/null
SELECT alike((SELECT provisioning_status || ': ' || provisioning_error FROM provisioning.clients WHERE slug = pg_temp.slug('nokey')),
             'failed: %flowgate.tenant_key_passphrase%(not retried)', 'nor stored: the job fails at once and says what to set');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries d JOIN pg_temp.jobs() j ON d.owner_id LIKE j.job_id || ':%'
            WHERE j.client_id = pg_temp.client('nokey')), 0, 'and nothing was enqueued for it');
COMMIT;

-- ---- Metrics ----------------------------------------------------------------------------------------------
SELECT ok((SELECT count(*) = 2 FROM provisioning.v_phase_latency), 'v_phase_latency reports create_project and schema_sync');
SELECT ok((SELECT bool_and(run_p50_s >= 0) FROM provisioning.v_phase_latency), 'with run times');

-- ---- Clean up ---------------------------------------------------------------------------------------------
SELECT pg_temp.settle() \g /dev/null
CREATE TEMP TABLE run_jobs AS SELECT job_id FROM pg_temp.jobs();
SELECT pg_temp.forget_clients() \g /dev/null
DELETE FROM provisioning.migrations \g /dev/null
INSERT INTO provisioning.migrations (version, name, sql, created_at) SELECT version, name, sql, created_at FROM saved_migrations \g /dev/null
SELECT flowgate.reset_setting(k) FROM unnest(ARRAY['provisioning.organization_id', 'provisioning.request_timeout_ms', 'provisioning.retry_base_seconds',
                                                   'provisioning.retry_cap_seconds', 'provisioning.management_api_url']) k \g /dev/null
SELECT flowgate.drop_secret('supabase_access_token') \g /dev/null
SELECT is((SELECT count(*)::int FROM provisioning.clients WHERE slug LIKE 'tap-%-' || (SELECT run FROM t))
            + (SELECT count(*)::int FROM provisioning.client_provisioning_jobs WHERE job_id IN (SELECT job_id FROM run_jobs))
            + (SELECT count(*)::int FROM flowgate.deliveries WHERE owner_module = 'provisioning' AND split_part(owner_id, ':', 1) IN (SELECT job_id::text FROM run_jobs))
            + (SELECT count(*)::int FROM flowgate.settings WHERE key IN ('provisioning.organization_id', 'provisioning.request_timeout_ms', 'provisioning.retry_base_seconds',
                                                                           'provisioning.retry_cap_seconds', 'provisioning.management_api_url')), 0,
          'the file leaves no client, job, delivery or setting behind');

SELECT * FROM finish();

-- Tenant provisioning: onboarding, the job lifecycle on the event-store runner
-- (claim, attempt reports with back-off, permanent failures, lease reclaim, operator retry), the
-- client stages, the listing and diagnostics, and who may do what.
BEGIN;
SELECT plan(51);
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA flowgate, provisioning TO authenticated;
-- Short back-off so the test can see the delay's bounds.
SELECT flowgate.set_setting('provisioning.retry_base_seconds', '2') \g /dev/null
SELECT flowgate.set_setting('provisioning.max_attempts', '3') \g /dev/null

-- ---- Onboarding ----------------------------------------------------------------------------------
SELECT is(provisioning.enqueue_client('acme-corp', 'Acme Corp', 'us-east-1', 'pro', '{"tier": "gold"}') #>> '{job,job_type}', 'create_project',
          'enqueue_client queues a create_project job');
SELECT is((SELECT provisioning_status || ' ' || region || ' ' || plan FROM provisioning.clients WHERE slug = 'acme-corp'), 'queued us-east-1 pro',
          'the client is queued');
SELECT throws_ok($$SELECT provisioning.enqueue_client('acme-corp', 'Again')$$, '23505', NULL, 'a slug is onboarded once');
SELECT throws_ok($$SELECT provisioning.enqueue_client('Acme Corp!', 'x')$$, '22023', NULL, 'a slug must be a project name');
SELECT throws_ok($$SELECT provisioning.enqueue_client('beta', 'Beta', 'mars-1')$$, '22023', NULL, 'a region must look like one');
SELECT throws_ok($$SELECT provisioning.enqueue_client('beta', 'Beta', NULL, 'platinum')$$, '22023', NULL, 'a plan must be a Supabase plan');
SELECT is((SELECT count(*)::int FROM provisioning.clients), 1, 'rejected onboardings wrote nothing');

-- ---- Claims ----------------------------------------------------------------------------------------
CREATE TEMP TABLE c1 AS SELECT provisioning.claim_job('worker-a') AS j;
SELECT is((SELECT j ->> 'status' FROM c1), 'running', 'a worker claims the job');
SELECT is((SELECT (j ->> 'attempts') || ' ' || (j ->> 'claimed_by') FROM c1), '1 worker-a', 'attempt 1, claimed by worker-a');
SELECT ok((SELECT (j ->> 'lease_expires_at')::timestamptz > now() + interval '4 minutes' FROM c1), 'with a lease (300 s by default)');
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = 'acme-corp'), 'creating_project', 'the client is creating_project');
SELECT is(provisioning.claim_job('worker-b'), NULL, 'a second worker gets nothing: the only job is taken');

-- ---- A transient failure retries with back-off -------------------------------------------------------
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, 'worker-b', true)$$, (SELECT j ->> 'job_id' FROM c1)), '55000', NULL,
                 'only the claiming worker may report');
CREATE TEMP TABLE r1 AS SELECT provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c1), 'worker-a', false, 503, 'HTTP 503: upstream busy') AS j;
SELECT is((SELECT j ->> 'status' FROM r1), 'queued', 'a 503 sends the job back to the queue');
SELECT ok((SELECT (j ->> 'next_attempt_at')::timestamptz BETWEEN now() AND now() + interval '2 seconds' FROM r1),
          'due again after a jittered back-off within base · 2^0 = 2 s');
SELECT is((SELECT j ->> 'last_error' FROM r1), 'HTTP 503: upstream busy', 'last_error is on the job');
SELECT is((SELECT provisioning_error FROM provisioning.clients WHERE slug = 'acme-corp'), 'HTTP 503: upstream busy', 'and on the client');
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = 'acme-corp'), 'creating_project', 'which keeps its stage');
-- A 429 asks for patience: min_retry_seconds (Retry-After) is honoured.
UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now() - interval '1 second';
SELECT is(provisioning.claim_job('worker-b') ->> 'attempts', '2', 'the retry is claimed by another worker (attempt 2)');
SELECT ok((provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c1), 'worker-b', false, 429, 'rate limited', 30) ->> 'next_attempt_at')::timestamptz
          >= now() + interval '30 seconds', 'a 429 with Retry-After 30 waits at least 30 s');
-- Attempts run out.
UPDATE provisioning.client_provisioning_jobs SET next_attempt_at = now() - interval '1 second';
SELECT is(provisioning.claim_job('worker-a') ->> 'attempts', '3', 'attempt 3');
CREATE TEMP TABLE r3 AS SELECT provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c1), 'worker-a', false, NULL, 'timed out after 30000 ms') AS j;
SELECT is((SELECT j ->> 'status' FROM r3), 'failed', 'a third transient failure with max_attempts 3 fails the job');
SELECT is((SELECT provisioning_status || ': ' || provisioning_error FROM provisioning.clients WHERE slug = 'acme-corp'),
          'failed: timed out after 30000 ms (gave up after 3 attempts)', 'the client is failed with the reason');
SELECT is(provisioning.claim_job('worker-a'), NULL, 'a failed job is not claimed again');

-- ---- Operator retry ------------------------------------------------------------------------------------
SELECT is(jsonb_array_length(provisioning.retry((SELECT client_id FROM provisioning.clients WHERE slug = 'acme-corp')) -> 'reset'), 1,
          'retry resets the failed job');
SELECT is((SELECT status || ' ' || attempts || ' ' || coalesce(claimed_by, '-') FROM provisioning.client_provisioning_jobs),
          'queued 0 -', 'attempts = 0, no claim');
SELECT is((SELECT provisioning_status || ' ' || coalesce(provisioning_error, '-') FROM provisioning.clients WHERE slug = 'acme-corp'),
          'queued -', 'the client is queued again, its error cleared');
SELECT throws_ok(format($$SELECT provisioning.retry(%L)$$, (SELECT client_id FROM provisioning.clients WHERE slug = 'acme-corp')),
                 '55000', NULL, 'retrying a client with nothing failed is refused');
SELECT throws_ok($$SELECT provisioning.retry('00000000-0000-4000-8000-000000000000')$$, 'P0002', NULL, 'an unknown client is P0002');
SELECT throws_ok($$SELECT provisioning.retry('acme-corp')$$, '55000', NULL, 'retry also takes the client''s slug');
SELECT throws_ok($$SELECT provisioning.retry('no-such-tenant')$$, 'P0002', NULL, 'an unknown slug is P0002');

-- ---- A permanent failure (401) is not retried --------------------------------------------------------------
CREATE TEMP TABLE c2 AS SELECT provisioning.claim_job('worker-a') AS j;
SELECT is(provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c2), 'worker-a', false, 401, 'HTTP 401: invalid access token') ->> 'status',
          'failed', 'a 401 fails the job at the first attempt');
SELECT is((SELECT last_error FROM provisioning.client_provisioning_jobs), 'HTTP 401: invalid access token (not retried)', 'and says it was not retried');
SELECT provisioning.retry((SELECT client_id FROM provisioning.clients WHERE slug = 'acme-corp')) \g /dev/null

-- ---- An expired lease is reclaimed ------------------------------------------------------------------------
CREATE TEMP TABLE c3 AS SELECT provisioning.claim_job('worker-dies') AS j;
UPDATE provisioning.client_provisioning_jobs SET lease_expires_at = now() - interval '1 second';
CREATE TEMP TABLE c3_before AS SELECT to_jsonb(j) AS row, (SELECT count(*) FROM provisioning.job_events) AS events
  FROM provisioning.client_provisioning_jobs j WHERE job_id = (SELECT (j ->> 'job_id')::uuid FROM c3);
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, 'worker-dies', true)$$, (SELECT j ->> 'job_id' FROM c3)), '55000', NULL,
                 'a lease that ran out is lost before any worker reclaims the job: its report is refused');
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, 'worker-dies', false, 500, repeat('e', 8193))$$, (SELECT j ->> 'job_id' FROM c3)), '22023', NULL,
                 'an error text over 8 KiB is refused (22023)');
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, E'worker\nnewline', true)$$, (SELECT j ->> 'job_id' FROM c3)), '22023', NULL,
                 'so is a worker name with a control character');
SELECT is((SELECT to_jsonb(j)::text || ' ' || (SELECT count(*) FROM provisioning.job_events) FROM provisioning.client_provisioning_jobs j
            WHERE job_id = (SELECT (j ->> 'job_id')::uuid FROM c3)),
          (SELECT row::text || ' ' || events FROM c3_before),
          'and none of them changed the job or its history');
CREATE TEMP TABLE c4 AS SELECT provisioning.claim_job('worker-b') AS j;
SELECT is((SELECT (j ->> 'claimed_by') || ' ' || (j ->> 'attempts') FROM c4), 'worker-b 2', 'a job whose lease expired goes to the next worker (attempt 2)');
SELECT alike((SELECT j ->> 'last_error' FROM c4), 'lease expired: worker worker-dies did not finish attempt 1%', 'the lost attempt is on record');
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, 'worker-dies', true)$$, (SELECT j ->> 'job_id' FROM c3)), '55000', NULL,
                 'the worker that lost its lease cannot report');

-- ---- Success moves the client along ----------------------------------------------------------------------
SELECT is(provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c4), 'worker-b', true) ->> 'status', 'succeeded', 'create_project succeeds');
SELECT is((SELECT string_agg(job_type || '=' || status, ',' ORDER BY created_at) FROM provisioning.client_provisioning_jobs),
          'create_project=succeeded,schema_sync=queued', 'and queues schema_sync');
CREATE TEMP TABLE c5 AS SELECT provisioning.claim_job('worker-a') AS j;
SELECT is((SELECT provisioning_status FROM provisioning.clients WHERE slug = 'acme-corp'), 'schema_syncing', 'claiming it makes the client schema_syncing');
SELECT provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM c5), 'worker-a', true) \g /dev/null
SELECT is((SELECT provisioning_status || ' ' || (provisioning_completed_at IS NOT NULL) || ' ' || coalesce(provisioning_error, '-')
             FROM provisioning.clients WHERE slug = 'acme-corp'), 'ready true -', 'then ready, stamped, no error');

-- ---- History, listing, diagnostics, metrics -----------------------------------------------------------------
SELECT throws_ok($$UPDATE provisioning.job_events SET event_type = 'x'$$, '55000', NULL, 'job events are append-only');
SELECT is((SELECT count(*)::int FROM provisioning.list_jobs('succeeded')), 2, 'list_jobs filters by status');
SELECT throws_ok($$SELECT * FROM provisioning.list_jobs('stuck')$$, '22023', NULL, 'list_jobs names the statuses it knows');
SELECT provisioning.enqueue_client('beta-labs', 'Beta Labs') \g /dev/null
SELECT is((SELECT string_agg(slug || ':' || provisioning_status || ':' || latest_job_type, ',') FROM provisioning.v_admin_diagnostics),
          'beta-labs:queued:create_project', 'v_admin_diagnostics lists clients that are not ready, with their latest job');
SELECT is((SELECT string_agg(job_type || ' ' || jobs || ' ' || avg_attempts, ', ' ORDER BY job_type) FROM provisioning.v_phase_latency),
          'create_project 1 2.00, schema_sync 1 1.00', 'v_phase_latency reports per phase');

-- ---- Who may do this ---------------------------------------------------------------------------------------
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = '{"sub": "tenant-admin", "role": "authenticated"}';
SELECT throws_ok($$SELECT provisioning.enqueue_client('gamma', 'Gamma')$$, '42501', NULL, 'a signed-in user cannot onboard tenants');
SELECT throws_ok($$SELECT * FROM provisioning.clients$$, '42501', NULL, 'nor read the clients');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

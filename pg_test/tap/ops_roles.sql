-- Release gates: the persona role matrix, run the way PostgREST runs a
-- request (SET LOCAL ROLE <jwt role> + request.jwt.claims), for direct table access (grants + RLS)
-- and for ops.ingest_event. Every allowed action succeeds; every forbidden one fails with 42501
-- (or a 403 outcome from ingest) and writes nothing.
BEGIN;
SELECT plan(69);

-- Two releases: R1 created by release manager rm-1, R2 by rm-2 (trusted setup names them).
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'roles-r1', 'event_type', 'release_created',
       'source_system', 'setup', 'release_id', 'e0000000-0000-4000-8000-000000000001', 'version', 'r1', 'created_by', 'rm-1')) \g /dev/null
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'roles-r2', 'event_type', 'release_created',
       'source_system', 'setup', 'release_id', 'e0000000-0000-4000-8000-000000000002', 'version', 'r2', 'created_by', 'rm-2')) \g /dev/null
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'roles-a2', 'event_type', 'approval',
       'source_system', 'setup', 'release_id', 'e0000000-0000-4000-8000-000000000002', 'decision', 'approved', 'approver_id', 'rm-2')) \g /dev/null
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'roles-x1', 'event_type', 'exception_requested',
       'source_system', 'setup', 'release_id', 'e0000000-0000-4000-8000-000000000001', 'gate_code', 'G4', 'reason', 'no staging env this week',
       'expires_at', now() + interval '1 day', 'exception_id', 'f0000000-0000-4000-8000-000000000001')) \g /dev/null
UPDATE ops.exceptions SET requested_by = 'dev-1' WHERE exception_id = 'f0000000-0000-4000-8000-000000000001';

CREATE FUNCTION pg_temp.ev(key text, type text, fields jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('schema_version', '1.0', 'idempotency_key', key, 'event_type', type, 'source_system', 'tap',
                              'release_id', 'e0000000-0000-4000-8000-000000000001') || fields
$$;
GRANT EXECUTE ON FUNCTION pg_temp.ev(text, text, jsonb) TO PUBLIC;

-- ---- audit_reader: reads everything, writes nothing --------------------------------------------
SELECT ok((SELECT bool_and(has_table_privilege('audit_reader', c.oid, 'SELECT')) FROM pg_class c
            WHERE c.relnamespace = 'ops'::regnamespace AND c.relkind IN ('r', 'v') AND c.relname <> 'release_locks'),
          'audit_reader has SELECT on every ops table and view (but the release locks, which hold no data)');
SELECT ok((SELECT NOT bool_or(has_table_privilege('audit_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')) FROM pg_class c
            WHERE c.relnamespace = 'ops'::regnamespace AND c.relkind IN ('r', 'v')),
          'audit_reader has no INSERT, UPDATE, DELETE or TRUNCATE on any of them');
SET LOCAL ROLE audit_reader;
SET LOCAL request.jwt.claims = '{"sub": "auditor-1", "role": "audit_reader"}';
SELECT is((SELECT count(*)::int FROM ops.approvals), 1, 'audit_reader reads every approval');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log WHERE idempotency_key LIKE 'roles-%'), 4, 'and the whole ingest log');
SELECT is((SELECT count(*)::int FROM ops.v_release_gate_summary), 8, 'and the reporting views');
SELECT throws_ok($$INSERT INTO ops.releases (release_id, version, created_by, source_system) VALUES (gen_random_uuid(), 'x', 'auditor-1', 'x')$$,
                 '42501', NULL, 'audit_reader cannot insert');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved'$$, '42501', NULL, 'audit_reader cannot update');
SELECT throws_ok($$DELETE FROM ops.gate_checks$$, '42501', NULL, 'audit_reader cannot delete');
SELECT throws_ok($$SELECT ops.ingest_event('{}')$$, '42501', NULL, 'audit_reader cannot send events');
SELECT ok(ops.evaluate_gate((SELECT gate_id FROM ops.release_gates LIMIT 1)) IS NOT NULL, 'audit_reader may evaluate gates');
RESET ROLE;

-- ---- ci_service_role ---------------------------------------------------------------------------
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "ci-bot", "role": "ci_service_role"}';
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                   SELECT release_id, gate_id, 'ci-bot', 'release_manager', 'approved' FROM ops.release_gates WHERE gate_code = 'G3' LIMIT 1$$,
                 '42501', NULL, 'ci_service_role cannot insert into ops.approvals');
SELECT throws_ok($$SELECT count(*) FROM ops.approvals$$, '42501', NULL, 'ci_service_role cannot read approvals');
SELECT lives_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
                  SELECT gate_id, release_id, 'sast', 'pass', 'ci-bot', 'github_actions' FROM ops.release_gates
                   WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                'ci_service_role reports a check as itself');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
                   SELECT gate_id, release_id, 'sast', 'pass', 'someone-else', 'github_actions' FROM ops.release_gates
                    WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '42501', NULL, 'but not in someone else''s name (RLS WITH CHECK)');
SELECT throws_ok($$UPDATE ops.release_gates SET status = 'passed'$$, '42501', NULL, 'nobody writes gate statuses but the evaluator');
SELECT is(ops.ingest_event(pg_temp.ev('github_actions/77/build_complete', 'build_complete', '{"status": "pass", "run_id": 77}')) ->> 'status',
          'accepted', 'ci_service_role sends build_complete');
SELECT is(ops.ingest_event(pg_temp.ev('ci-approves', 'approval', '{"decision": "approved"}')) #>> '{detail,error}', 'forbidden',
          'ci_service_role may not send an approval (403)');
SELECT is(current_setting('response.status'), '403', 'PostgREST answers 403');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log), 2, 'ci_service_role reads only the ingest rows it sent');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G1'), 'passed',
          'its direct check and its event both re-evaluated G1');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM ops.approvals WHERE approver_id = 'ci-bot'), 0, 'no approval was written by ci');

-- ---- qa_tester --------------------------------------------------------------------------------
SET LOCAL ROLE qa_tester;
SET LOCAL request.jwt.claims = '{"sub": "qa-1", "role": "qa_tester"}';
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'qa-1', decided_at = now()$$,
                 '42501', NULL, 'qa_tester cannot update ops.exceptions');
SELECT lives_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                  SELECT release_id, gate_id, 'qa-1', 'qa_tester', 'approved' FROM ops.release_gates
                   WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                'qa_tester inserts their own G2 signoff');
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                   SELECT release_id, gate_id, 'qa-1', 'qa_tester', 'approved' FROM ops.release_gates
                    WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '42501', NULL, 'but not a G3 approval');
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                   SELECT release_id, gate_id, 'qa-2', 'qa_tester', 'approved' FROM ops.release_gates
                    WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                 '42501', NULL, 'nor one in another tester''s name');
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                   SELECT release_id, gate_id, 'qa-1', 'release_manager', 'approved' FROM ops.release_gates
                    WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                 '42501', NULL, 'nor one claiming another persona');
SELECT is((SELECT count(*)::int FROM ops.approvals), 1, 'qa_tester reads only their own approvals');
SELECT is(ops.ingest_event(pg_temp.ev('qa-signoff', 'gate_signoff', '{"report_url": "https://qa/r1"}')) #>> '{detail,persona_role}', 'qa_tester',
          'qa_tester sends a G2 signoff, recorded with their persona');
SELECT is(ops.ingest_event(pg_temp.ev('qa-g3', 'approval', '{"decision": "approved"}')) #>> '{detail,error}', 'forbidden',
          'qa_tester may not send a G3 approval');
SELECT is(ops.ingest_event(pg_temp.ev('qa-as-other', 'gate_signoff', '{"approver_id": "qa-2"}')) #>> '{detail,error}', 'forbidden',
          'nor sign off as someone else');
SELECT throws_ok($$SELECT count(*) FROM ops.event_ingest_log$$, '42501', NULL, 'qa_tester cannot read the ingest log');
SELECT is((SELECT status FROM ops.v_release_gate_summary WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'),
          'passed', 'qa_tester reads gate status through the views');
RESET ROLE;

-- ---- release_manager --------------------------------------------------------------------------
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT is((SELECT count(*)::int FROM ops.approvals), 2,
          'release_manager rm-1 reads the approvals of the release they created (not rm-2''s)');
SELECT is((SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM ops.event_ingest_log WHERE idempotency_key LIKE 'roles-%'),
          'roles-r1,roles-r2,roles-x1', 'and of the ingest log every row but the envelope of rm-2''s approval of rm-2''s release');
SELECT lives_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'rm-1', decided_at = now()
                   WHERE exception_id = 'f0000000-0000-4000-8000-000000000001'$$,
                'release_manager decides an exception');
SELECT throws_ok($$UPDATE ops.exceptions SET decided_by = 'rm-9' WHERE exception_id = 'f0000000-0000-4000-8000-000000000001'$$,
                 '42501', NULL, 'but only in their own name');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G4'), 'bypassed',
          'the decision re-evaluated G4 (bypassed)');
SELECT lives_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                  SELECT release_id, gate_id, 'rm-1', 'release_manager', 'approved' FROM ops.release_gates
                   WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                'release_manager approves G3');
SELECT throws_ok($$DELETE FROM ops.releases$$, '42501', NULL, 'release_manager cannot delete releases');
-- An approval is checked in this order: a gate that takes none (400), someone else named as
-- approver (403), then the persona.
SELECT is(ops.ingest_event(pg_temp.ev('roles-rm-g1', 'approval', '{"gate_code": "G1", "decision": "approved", "approver_id": "rm-9"}'))
          #>> '{detail,error}', 'invalid_field', 'an approval of G1 is refused as such (400), even when it names someone else');
SELECT is(ops.ingest_event(pg_temp.ev('roles-rm-g3', 'approval', '{"gate_code": "G3", "decision": "approved", "approver_id": "rm-9"}'))
          #>> '{detail,error}', 'forbidden', 'an approval of G3 naming someone else is 403');
SELECT lives_ok($$UPDATE ops.releases SET title = 'mine' WHERE release_id IN ('e0000000-0000-4000-8000-000000000001', 'e0000000-0000-4000-8000-000000000002')$$,
                'release_manager updates release titles');
RESET ROLE;
SELECT is((SELECT string_agg(version || '=' || coalesce(title, '-'), ',' ORDER BY version) FROM ops.releases WHERE version IN ('r1', 'r2')),
          'r1=mine,r2=-', 'but only of releases they created (RLS USING)');

-- ---- sre ----------------------------------------------------------------------------------------
SET LOCAL ROLE sre;
SET LOCAL request.jwt.claims = '{"sub": "sre-1", "role": "sre"}';
SELECT lives_ok($$INSERT INTO ops.incidents (environment, severity, summary, opened_by) VALUES ('production', 'sev2', 'latency', 'sre-1')$$,
                'sre opens an incident');
SELECT lives_ok($$INSERT INTO ops.environment_events (environment, event_kind, recorded_by) VALUES ('production', 'maintenance_started', 'sre-1')$$,
                'sre records an environment event');
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision)
                   SELECT release_id, gate_id, 'sre-1', 'sre', 'approved' FROM ops.release_gates LIMIT 1$$,
                 '42501', NULL, 'sre cannot approve');
SELECT ok((SELECT count(*) FROM ops.event_ingest_log) > 0, 'sre reads the ingest log');
SELECT is(ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'drill-1', 'event_type', 'recovery_drill',
              'source_system', 'runbook', 'environment', 'staging', 'drill_type', 'backup_restore', 'outcome', 'passed', 'rto_seconds', 900))
            ->> 'status', 'accepted', 'sre records a recovery drill through ingest');
RESET ROLE;

-- ---- developer ----------------------------------------------------------------------------------
SET LOCAL ROLE developer;
SET LOCAL request.jwt.claims = '{"sub": "dev-1", "role": "developer"}';
SELECT lives_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                  SELECT release_id, gate_id, 'flaky e2e', 'dev-1', now() + interval '1 hour' FROM ops.release_gates
                   WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                'developer requests an exception');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at, status, decided_by, decided_at)
                   SELECT release_id, gate_id, 'self-service', 'dev-1', now() + interval '1 hour', 'approved', 'dev-2', now()
                     FROM ops.release_gates WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                 '42501', NULL, 'but cannot insert it already approved');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved'$$, '42501', NULL, 'nor approve one');
SELECT throws_ok($$SELECT count(*) FROM ops.approvals$$, '42501', NULL, 'developer cannot read approvals');
SELECT throws_ok($$INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('e0000000-0000-4000-8000-000000000001', 'dev', 'dev-1')$$,
                 '42501', NULL, 'developer cannot record deployments');
SELECT is(ops.ingest_event(pg_temp.ev('dev-exc', 'exception_requested',
              jsonb_build_object('gate_code', 'G1', 'reason', 'lint outage', 'expires_at', now() + interval '1 hour'))) ->> 'status',
          'accepted', 'developer requests an exception through ingest');
SELECT is(ops.ingest_event(pg_temp.ev('dev-deploy', 'deployment_started', '{"environment": "dev"}')) #>> '{detail,error}', 'forbidden',
          'but may not send deployment events');
RESET ROLE;

-- ---- Roles outside the six --------------------------------------------------------------------
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
END $$;
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = '{"sub": "random-user", "role": "authenticated"}';
SELECT throws_ok($$SELECT count(*) FROM ops.releases$$, '42501', NULL, 'a signed-in user without a persona reads nothing');
SELECT throws_ok($$SELECT ops.ingest_event('{}')$$, '42501', NULL, 'and cannot send events');
RESET ROLE;
SET LOCAL ROLE anon;
SELECT throws_ok($$SELECT ops.is_eligible_for_promotion('e0000000-0000-4000-8000-000000000001', 'staging')$$, '42501', NULL,
                 'anon cannot even evaluate');
RESET ROLE;

-- Nothing forbidden was written.
SELECT is((SELECT count(*)::int FROM ops.approvals WHERE approver_id IN ('ci-bot', 'qa-2', 'sre-1') OR (approver_id = 'qa-1' AND persona_role <> 'qa_tester')),
          0, 'no forbidden approval exists');
SELECT is((SELECT count(*)::int FROM ops.exceptions WHERE requested_by = 'dev-1' AND status = 'approved' AND decided_by = 'dev-2'), 0,
          'no self-approved exception exists');
SELECT is((SELECT count(*)::int FROM ops.deployments), 0, 'no deployment was recorded');

-- ---- A release manager who logs in directly cannot decide her own exception as someone else ----
-- She writes another person's subject into request.jwt.claims: it is not believed (she did not
-- log in as PostgREST's authenticator), so she stays herself and four eyes hold.
DO $$ BEGIN CREATE ROLE fg_rm_login LOGIN; END $$;
GRANT release_manager TO fg_rm_login;
SET LOCAL SESSION AUTHORIZATION fg_rm_login;
SELECT set_config('request.jwt.claims', '{"sub": "rm-other", "role": "release_manager"}', true) \g /dev/null
SELECT is(ops.ingest_event(pg_temp.ev('imp-exc', 'exception_requested',
              jsonb_build_object('gate_code', 'G3', 'reason', 'hotfix', 'expires_at', now() + interval '1 day',
                                 'exception_id', 'f0000000-0000-4000-8000-0000000000aa'))) ->> 'status', 'accepted',
          'a directly logged-in release manager requests an exception');
SELECT is(ops.ingest_event(pg_temp.ev('imp-dec', 'exception_decided',
              jsonb_build_object('exception_id', 'f0000000-0000-4000-8000-0000000000aa', 'decision', 'approved'))) #>> '{detail,error}',
          'forbidden', 'deciding it with forged claims is her own decision, refused (four eyes)');
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is((SELECT requested_by || ' ' || status FROM ops.exceptions WHERE exception_id = 'f0000000-0000-4000-8000-0000000000aa'),
          'fg_rm_login requested', 'recorded as the login role, still requested');
SELECT isnt((SELECT status FROM ops.release_gates WHERE release_id = 'e0000000-0000-4000-8000-000000000001' AND gate_code = 'G3'), 'bypassed',
            'G3 is not bypassed');

-- The matrix the grants and policies come from: every table of ops has row-level security and
-- at least one policy; what it grants is what the installed catalog says.
SELECT is_empty($$
    SELECT c.relname FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'ops'::regnamespace AND c.relkind = 'r' AND c.relname <> 'release_locks'
       AND (NOT c.relrowsecurity OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid))$$,
    'every ops table has row-level security and a policy from the persona matrix');
SELECT ok((SELECT c.relrowsecurity AND c.relpersistence = 'u'
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
                                   WHERE a.grantee <> c.relowner)
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)
             FROM pg_catalog.pg_class c WHERE c.oid = 'ops.release_locks'::regclass),
    'the release locks are owner only (row-level security, no policy, no grant) and unlogged');
SELECT ok((SELECT count(*) FROM ops.persona_privileges() s WHERE s LIKE 'CREATE POLICY %') =
          (SELECT count(*) FROM pg_catalog.pg_policies WHERE schemaname = 'ops'),
    'ops.persona_privileges() lists every ops policy there is');
SELECT is((SELECT pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint WHERE conname = 'approvals_persona_role_check'),
    $$CHECK ((persona_role = ANY (ARRAY['release_manager'::text, 'qa_tester'::text, 'sre'::text, 'ci_service_role'::text, 'developer'::text, 'audit_reader'::text])))$$,
    'an approval is recorded under one of the six personas');

SELECT * FROM finish();
ROLLBACK;

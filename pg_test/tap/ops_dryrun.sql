-- Release gates: one release driven G1 → G2 → G3 → staging deploy → G4 →
-- production through ops.ingest_event alone, each step sent by its persona the way PostgREST
-- sends it (SET LOCAL ROLE + request.jwt.claims). Afterwards the whole chain is reconstructed
-- from ops.* alone: who did what, with which evidence, in which order.
BEGIN;
SELECT plan(37);

CREATE FUNCTION pg_temp.send(key text, type text, fields jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', key, 'event_type', type,
        'source_system', CASE WHEN key LIKE 'github_actions/%' THEN 'github_actions' ELSE 'n8n' END,
        'release_id', '99999999-0000-4000-8000-000000000042') || fields)
$$;
GRANT EXECUTE ON FUNCTION pg_temp.send(text, text, jsonb) TO PUBLIC;

-- 1. CI creates the release on merge.
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "github-actions[bot]", "role": "ci_service_role"}';
SELECT is(pg_temp.send('github_actions/9001/release_created', 'release_created',
          '{"version": "2026.12.0", "repository": "acme/odoo", "commit_sha": "9fceb02d0ae598e95dc970b74767f19372d61af8", "title": "December release"}') ->> 'status',
          'accepted', '1. CI creates the release');
SELECT is(pg_temp.send('github_actions/9001/gate_configured', 'gate_configured', '{"gate_code": "G1", "required_checks": ["build", "unit-tests"]}') ->> 'status',
          'accepted', '   and declares G1''s required checks');
-- 2. G1: the build and the unit tests.
SELECT is(pg_temp.send('github_actions/9001/build_complete', 'build_complete',
          '{"status": "pass", "run_id": 9001, "details_url": "https://github.com/acme/odoo/actions/runs/9001", "evidence": [{"artifact_type": "build_log", "uri": "https://github.com/acme/odoo/actions/runs/9001/logs"}]}')
          #>> '{detail,gates,G1}', 'in_progress', '2. the build passes; G1 still waits for unit-tests');
SELECT is(pg_temp.send('github_actions/9001/unit-tests', 'check_result', '{"gate_code": "G1", "check_name": "unit-tests", "status": "pass", "run_id": 9001}')
          #>> '{detail,gates,G1}', 'passed', '   unit tests pass: G1 passed');
SELECT is(pg_temp.send('github_actions/9001/build_complete', 'build_complete', '{"status": "pass", "run_id": 9001}') ->> 'status',
          'duplicate', '   a re-run of the same workflow step is a duplicate');
SELECT is(pg_temp.send('github_actions/9002/deploy', 'deployment_started', '{"environment": "staging"}') #>> '{detail,error}', 'conflict',
          '   staging is refused before G2');
RESET ROLE;

-- 3. G2: QA signs off with the test report.
SET LOCAL ROLE qa_tester;
SET LOCAL request.jwt.claims = '{"sub": "qa.quinn", "role": "qa_tester"}';
SELECT is(pg_temp.send('n8n/qa-signoff/2026.12.0', 'gate_signoff',
          '{"report_url": "https://testrail.acme/runs/311", "comment": "regression suite green", "evidence": [{"artifact_type": "test_report", "uri": "https://testrail.acme/runs/311/report.pdf", "sha256": "a3f1c2d4e5b6a7980112233445566778899aabbccddeeff00112233445566778"}]}')
          #>> '{detail,gates,G2}', 'passed', '3. QA signs off: G2 passed');
RESET ROLE;
SELECT ok(ops.is_eligible_for_promotion('99999999-0000-4000-8000-000000000042', 'staging'), '   eligible for staging now');
SELECT ok(NOT ops.is_eligible_for_promotion('99999999-0000-4000-8000-000000000042', 'production'), '   not yet for production');

-- 4. G3: the release manager approves with the rollback plan.
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm.rosa", "role": "release_manager"}';
SELECT is(pg_temp.send('n8n/release-approval/2026.12.0', 'approval',
          '{"decision": "approved", "comment": "go for staging", "evidence": [{"artifact_type": "rollback_plan", "uri": "https://wiki.acme/releases/2026.12.0/rollback"}]}')
          #>> '{detail,gates,G3}', 'passed', '4. the release manager approves: G3 passed');
RESET ROLE;

-- 5. Staging deployment (CI), 6. G4 health check.
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "github-actions[bot]", "role": "ci_service_role"}';
SELECT is(pg_temp.send('github_actions/9003/deploy-staging', 'deployment_started',
          '{"environment": "staging", "deployment_id": "99999999-0000-4000-8000-0000000000a1", "external_ref": "argo/odoo-staging/118"}') ->> 'status',
          'accepted', '5. the staging deployment starts');
SELECT is(pg_temp.send('github_actions/9003/deploy-staging-done', 'deployment_finished',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000a1", "status": "succeeded"}') ->> 'status', 'accepted', '   and succeeds');
SELECT is(pg_temp.send('github_actions/9003/health', 'health_check',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000a1", "status": "pass", "uri": "https://grafana.acme/d/odoo-staging?from=now-15m", "details": {"p99_ms": 212, "error_rate": 0.001}}')
          #>> '{detail,gates,G4}', 'passed', '6. the health check passes: G4 passed');
SELECT ok(ops.is_eligible_for_promotion('99999999-0000-4000-8000-000000000042', 'production'), '   eligible for production');
-- 7. Production.
SELECT is(pg_temp.send('github_actions/9004/deploy-production', 'deployment_started',
          '{"environment": "production", "deployment_id": "99999999-0000-4000-8000-0000000000b1", "external_ref": "argo/odoo-prod/77"}') ->> 'status',
          'accepted', '7. the production deployment starts');
SELECT is(pg_temp.send('github_actions/9004/deploy-production-done', 'deployment_finished',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000b1", "status": "succeeded"}') ->> 'status', 'accepted', '   and succeeds');
RESET ROLE;

-- ---- The chain, reconstructed from ops.* alone ----------------------------------------------------
SELECT is((SELECT status FROM ops.releases WHERE release_id = '99999999-0000-4000-8000-000000000042'), 'in_production', 'the release is in production');
SELECT is((SELECT string_agg(gate_code, ' < ' ORDER BY passed_at, gate_code) FROM ops.release_gates
            WHERE release_id = '99999999-0000-4000-8000-000000000042' AND status = 'passed'),
          'G1 < G2 < G3 < G4', 'all four gates passed, in order');
SELECT is((SELECT string_agg(check_name || ':' || status || ' by ' || reported_by, ', ' ORDER BY recorded_at) FROM ops.gate_checks
            WHERE release_id = '99999999-0000-4000-8000-000000000042'),
          'build:pass by github-actions[bot], unit-tests:pass by github-actions[bot]', 'G1: which checks passed, reported by whom');
SELECT is((SELECT string_agg(g.gate_code || ' ' || a.decision || ' by ' || a.approver_id || ' as ' || a.persona_role, ', ' ORDER BY a.recorded_at)
             FROM ops.approvals a JOIN ops.release_gates g ON g.gate_id = a.gate_id
            WHERE a.release_id = '99999999-0000-4000-8000-000000000042'),
          'G2 approved by qa.quinn as qa_tester, G3 approved by rm.rosa as release_manager', 'G2 and G3: who approved, in which role');
SELECT is((SELECT string_agg(gate_code || ':' || array_to_string(present_types, '+'), ' ' ORDER BY gate_code) FROM ops.v_evidence_completeness
            WHERE release_id = '99999999-0000-4000-8000-000000000042' AND complete),
          'G1:build_log G2:qa_signoff+test_report G3:rollback_plan G4:health_check', 'the evidence of every gate, complete');
SELECT is((SELECT count(*)::int FROM ops.evidence_artifacts WHERE release_id = '99999999-0000-4000-8000-000000000042' AND sha256 IS NOT NULL), 1,
          'the test report keeps its checksum');
SELECT is((SELECT string_agg(environment || ' ' || status || ' g4=' || g4_status || ' by ' || deployed_by || ' (' || external_ref || ')', ', ' ORDER BY started_at, environment)
             FROM ops.v_deployment_history WHERE release_id = '99999999-0000-4000-8000-000000000042'),
          'staging succeeded g4=passed by github-actions[bot] (argo/odoo-staging/118), production succeeded g4=pending by github-actions[bot] (argo/odoo-prod/77)',
          'both deployments, their health and where they ran');
SELECT is((SELECT string_agg(environment || ':' || event_kind, ' > ' ORDER BY event_id) FROM ops.environment_events
            WHERE release_id = '99999999-0000-4000-8000-000000000042'),
          'staging:deployment_started > staging:deployment_succeeded > staging:health_check > production:deployment_started > production:deployment_succeeded',
          'the environment timeline');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log WHERE release_id = '99999999-0000-4000-8000-000000000042' AND processing_status = 'accepted'), 11,
          'eleven accepted events');
SELECT is((SELECT string_agg(DISTINCT processing_status || ' ' || http_status, ', ') FROM ops.event_ingest_log
            WHERE release_id = '99999999-0000-4000-8000-000000000042' AND processing_status <> 'accepted'),
          'duplicate 200, rejected 409', 'plus the duplicate and the early staging attempt, both on record');
-- Every fact points at the accepted envelope it came from, so "who sent this, when, from which
-- system, with which key" needs no CI log.
SELECT is((SELECT count(*)::int FROM (
             SELECT ingest_id FROM ops.gate_checks WHERE release_id = '99999999-0000-4000-8000-000000000042'
             UNION ALL SELECT ingest_id FROM ops.approvals WHERE release_id = '99999999-0000-4000-8000-000000000042'
             UNION ALL SELECT ingest_id FROM ops.evidence_artifacts WHERE release_id = '99999999-0000-4000-8000-000000000042'
             UNION ALL SELECT ingest_id FROM ops.deployments WHERE release_id = '99999999-0000-4000-8000-000000000042'
             UNION ALL SELECT ingest_id FROM ops.environment_events WHERE release_id = '99999999-0000-4000-8000-000000000042'
             UNION ALL SELECT ingest_id FROM ops.releases WHERE release_id = '99999999-0000-4000-8000-000000000042') f
           LEFT JOIN ops.event_ingest_log l ON l.ingest_id = f.ingest_id AND l.processing_status = 'accepted'
          WHERE l.ingest_id IS NULL), 0, 'every row of the chain links to its accepted ingest record');
SELECT is((SELECT string_agg(DISTINCT l.source_system || '/' || l.received_by, ', ') FROM ops.event_ingest_log l
            WHERE l.release_id = '99999999-0000-4000-8000-000000000042' AND l.processing_status = 'accepted'),
          'github_actions/github-actions[bot], n8n/qa.quinn, n8n/rm.rosa', 'and every record names its source system and sender');
SELECT is((SELECT string_agg(environment || '=' || eligible, ',' ORDER BY environment) FROM ops.v_promotion_eligibility
            WHERE release_id = '99999999-0000-4000-8000-000000000042'), 'production=true,staging=true',
          'v_promotion_eligibility agrees with the gates');
SELECT is((SELECT count(*)::int FROM ops.v_release_gate_summary
            WHERE release_id = '99999999-0000-4000-8000-000000000042' AND status = 'passed' AND checks_failed = 0), 4,
          'v_release_gate_summary: four gates passed, no failing check');

-- ---- A rollback withdraws G4 ---------------------------------------------------------------------
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "github-actions[bot]", "role": "ci_service_role"}';
-- Staging is redeployed and healthy while production runs; then production is rolled back.
SELECT is((SELECT string_agg(pg_temp.send(k, t, f::jsonb) ->> 'status', ',' ORDER BY n)
             FROM (VALUES (1, 'github_actions/9005/deploy-staging', 'deployment_started',
                           '{"environment": "staging", "deployment_id": "99999999-0000-4000-8000-0000000000a3"}'),
                          (2, 'github_actions/9005/deploy-staging-done', 'deployment_finished',
                           '{"deployment_id": "99999999-0000-4000-8000-0000000000a3", "status": "succeeded"}'),
                          (3, 'github_actions/9005/health', 'health_check',
                           '{"deployment_id": "99999999-0000-4000-8000-0000000000a3", "status": "pass", "uri": "https://grafana.acme/d/odoo-staging?from=now-1m"}'))
                  AS x(n, k, t, f)),
          'accepted,accepted,accepted', 'staging is redeployed and passes its health check while production runs');
SELECT is(pg_temp.send('github_actions/9005/rollback', 'rollback',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000b1", "reason": "error rate 4% after the deploy"}') #>> '{detail,gates,G4}',
          'failed', 'production is rolled back: G4 failed (the staging health before it no longer counts)');
SELECT ok(NOT ops.is_eligible_for_promotion('99999999-0000-4000-8000-000000000042', 'production'), '   and the release may not go to production again');
-- Health evidence attached before a deployment does not speak for it (evidence and deployments
-- are timed by the clock, so this holds inside this one transaction too): a staging deployment
-- marked healthy directly, with no new health_check artifact, leaves G4 waiting.
INSERT INTO ops.deployments (deployment_id, release_id, environment, deployed_by)
VALUES ('99999999-0000-4000-8000-0000000000c1', '99999999-0000-4000-8000-000000000042', 'staging', 'github-actions[bot]');
UPDATE ops.deployments SET status = 'succeeded' WHERE deployment_id = '99999999-0000-4000-8000-0000000000c1';
UPDATE ops.deployments SET g4_status = 'passed' WHERE deployment_id = '99999999-0000-4000-8000-0000000000c1';
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = '99999999-0000-4000-8000-000000000042' AND gate_code = 'G4'),
          'in_progress', 'a deployment marked healthy directly, with only older health evidence: G4 waits for a health_check artifact');
SELECT is(pg_temp.send('github_actions/9006/deploy-staging', 'deployment_started',
          '{"environment": "staging", "deployment_id": "99999999-0000-4000-8000-0000000000a2", "external_ref": "argo/odoo-staging/119"}') #>> '{detail,gates,G4}',
          'in_progress', 'a new staging deployment: G4 waits for its health check');
SELECT is(pg_temp.send('github_actions/9006/deploy-staging-done', 'deployment_finished',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000a2", "status": "succeeded"}') ->> 'status', 'accepted', '   and succeeds');
SELECT is(pg_temp.send('github_actions/9006/health', 'health_check',
          '{"deployment_id": "99999999-0000-4000-8000-0000000000a2", "status": "pass", "uri": "https://grafana.acme/d/odoo-staging?from=now-5m"}')
          #>> '{detail,gates,G4}', 'passed', '   which passes: G4 passed again');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

-- Release gates (issue 13, item 6): every rule ops.ingest_event enforces on the values it writes
-- also holds for direct table writes by the personas whose grants and RLS policies allow them,
-- run the way PostgREST runs a request (SET LOCAL ROLE <jwt role> + request.jwt.claims). Each
-- refused write fails with its documented SQLSTATE (23514 a CHECK, 22023 a value no event can
-- carry, 55000 a move no event can make) and leaves nothing behind; each legitimate direct write
-- still works, and so does ingest, which writes through the same tables.
BEGIN;
SELECT plan(116);

-- Three releases, created through ingest by a trusted session: X (exceptions and values),
-- D (deployments; made eligible for staging) and I (everything again through ingest).
CREATE FUNCTION pg_temp.ev(key text, type text, fields jsonb, release text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('schema_version', '1.0', 'idempotency_key', key, 'event_type', type, 'source_system', 'tap',
                              'release_id', release) || fields
$$;
GRANT EXECUTE ON FUNCTION pg_temp.ev(text, text, jsonb, text) TO PUBLIC;
SELECT ops.ingest_event(pg_temp.ev('dw-x', 'release_created', '{"version": "dw-x", "created_by": "rm-1"}', 'd6000000-0000-4000-8000-000000000001')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('dw-d', 'release_created', '{"version": "dw-d", "created_by": "rm-1"}', 'd6000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('dw-i', 'release_created', '{"version": "dw-i", "created_by": "rm-1"}', 'd6000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('dw-d-build', 'build_complete', '{"status": "pass"}', 'd6000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('dw-d-qa', 'gate_signoff', '{"report_url": "https://qa/dw-d"}', 'd6000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ok(ops.is_eligible_for_promotion('d6000000-0000-4000-8000-000000000002', 'staging'), 'setup: release D is eligible for staging');

-- ==== Anonymous writers: a persona JWT without a subject writes nothing ===========================
SET LOCAL ROLE developer;
SET LOCAL request.jwt.claims = '{"role": "developer"}';
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                   SELECT release_id, gate_id, 'nobody', 'developer', now() + interval '1 day' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '42501', NULL, 'a persona token with no sub cannot write an exception in the role''s name');

-- ==== Exceptions: the 90-day cap, a future expiry, provenance (developer) ==========================
SET LOCAL ROLE developer;
SET LOCAL request.jwt.claims = '{"sub": "dev-1", "role": "developer"}';
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                   SELECT release_id, gate_id, 'forever', 'dev-1', '2999-01-01 00:00:00+00' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '23514', NULL, 'developer: an exception expiring in 2999 is refused (CHECK exception_expiry_within_90_days)');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                   SELECT release_id, gate_id, 'forever', 'dev-1', now() + interval '90 days 1 second' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '22023', NULL, 'so is one expiring a second after 90 days of 24 hours');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                   SELECT release_id, gate_id, 'forever', 'dev-1', now() - interval '1 minute' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '22023', NULL, 'and one that has already expired (expires_at must be in the future)');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at, created_at)
                   SELECT release_id, gate_id, 'forever', 'dev-1', '2999-02-01 00:00:00+00', '2999-01-01 00:00:00+00' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '22023', NULL, 'a forged created_at does not move the 90 days (created_at is the time of the write)');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at, ingest_id)
                   SELECT release_id, gate_id, 'forever', 'dev-1', now() + interval '1 day', gen_random_uuid() FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '22023', NULL, 'nor may a direct write claim an ingest_id');
SELECT throws_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at)
                   SELECT release_id, gate_id, E'  \n ', 'dev-1', now() + interval '1 day' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                 '23514', NULL, 'a blank reason is refused, as ingest refuses it');
SELECT is((SELECT count(*)::int FROM ops.exceptions WHERE release_id = 'd6000000-0000-4000-8000-000000000001'), 0,
          'none of them was written');
SELECT lives_ok($$INSERT INTO ops.exceptions (exception_id, release_id, gate_id, reason, requested_by, expires_at)
                  SELECT 'd6e00000-0000-4000-8000-000000000001', release_id, gate_id, 'scanner outage', 'dev-1', now() + interval '90 days'
                    FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                'developer requests an exception expiring in exactly 90 days');
SELECT lives_ok($$INSERT INTO ops.exceptions (exception_id, release_id, gate_id, reason, requested_by, expires_at)
                  SELECT 'd6e00000-0000-4000-8000-000000000002', release_id, gate_id, E'flaky e2e\nsee ticket', 'dev-1', now() + interval '1 hour'
                    FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                'and another expiring in an hour (multi-line reason)');
RESET ROLE;
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT lives_ok($$INSERT INTO ops.exceptions (exception_id, release_id, gate_id, reason, requested_by, expires_at)
                  SELECT 'd6e00000-0000-4000-8000-000000000003', release_id, gate_id, 'my own', 'rm-1', now() + interval '1 day'
                    FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                'a release manager requests one too');
RESET ROLE;

-- ==== Exceptions: who decides, four eyes, transitions, decided rows are final (release_manager) ===
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'rm-1' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000003'$$,
                 '23514', NULL, 'four eyes: rm-1 cannot approve the exception rm-1 requested (CHECK exception_four_eyes)');
SELECT throws_ok($$UPDATE ops.exceptions SET decided_by = 'rm-1', decision_comment = 'looks fine' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '23514', NULL, 'a decider or comment on an exception still requested is refused (CHECK exception_decision_recorded)');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'rm-1', decided_at = now() - interval '3 days'
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '22023', NULL, 'a backdated decision is refused (decided_at is the time of the write)');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'revoked', decided_by = 'rm-1', decided_at = now(), revoked_by = 'rm-1'
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'a requested exception cannot be revoked (requested -> approved | rejected only)');
SELECT lives_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'rm-1', decision_comment = 'until the scanner is back'
                   WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                'rm-1 approves the developer''s exception directly, leaving decided_at out');
SELECT is((SELECT decided_at FROM ops.exceptions WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'), now(),
          'decided_at is recorded by the database');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'), 'bypassed',
          'and G3 is bypassed');
SELECT throws_ok($$UPDATE ops.exceptions SET decision_comment = 'forever, actually' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'the decision of an approved exception cannot be edited');
SELECT throws_ok($$UPDATE ops.exceptions SET decided_at = now() - interval '1 year' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'nor its decision time');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'rejected' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'an approved exception cannot become rejected (only revoked)');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'requested' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '23514', NULL, 'nor go back to requested (a requested exception has no decision)');
SELECT is((SELECT status || ' ' || decided_by || ' ' || decision_comment || ' ' || (decided_at = now())
             FROM ops.exceptions WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'),
          'approved rm-1 until the scanner is back true', 'the approved exception is unchanged');
RESET ROLE;
-- The developer's second exception expires (moved by the owner, the way ops_ingest.sql does).
UPDATE ops.exceptions SET expires_at = now() - interval '1 second' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000002';
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-2", "role": "release_manager"}';
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved', decided_by = 'rm-2' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000002'$$,
                 '55000', NULL, 'an expired exception cannot be approved');
SELECT lives_ok($$UPDATE ops.exceptions SET status = 'rejected', decided_by = 'rm-2' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000002'$$,
                'but it can be rejected');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'revoked', revoked_by = 'rm-2', decided_by = 'rm-2', decision_comment = 'scanner is back'
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'a revocation does not write over the approval it withdraws');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'revoked', decided_by = 'rm-1', decided_at = now(), revoked_by = 'rm-1'
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '42501', NULL, 'nor is it made in another release manager''s name (policy)');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'revoked', revoked_by = 'rm-2', revoked_at = now() - interval '1 day'
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '22023', NULL, 'nor backdated (revoked_at is the time of the write)');
SELECT throws_ok($$UPDATE ops.exceptions SET revoked_by = 'rm-2' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '42501', NULL, 'a revoker on an exception still approved is refused (policy; the owner below meets CHECK exception_revocation_recorded)');
SELECT lives_ok($$UPDATE ops.exceptions SET status = 'revoked', revoked_by = 'rm-2', revoke_comment = 'scanner is back'
                   WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                'another release manager revokes the approved exception');
SELECT is((SELECT decided_by || ' ' || decision_comment || ' | ' || revoked_by || ' ' || revoke_comment || ' ' || (revoked_at = now())
             FROM ops.exceptions WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'),
          'rm-1 until the scanner is back | rm-2 scanner is back true', 'the approval stays beside its revocation, timed by the database');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'), 'pending',
          'and G3 is no longer bypassed');
UPDATE ops.exceptions SET status = 'approved' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001';
SELECT is((SELECT status FROM ops.exceptions WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'), 'revoked',
          'a revoked exception is out of reach of release managers (RLS): nothing changes');
RESET ROLE;
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '23514', NULL, 'and final for every writer, the owner included: a revoked row keeps its revocation (CHECK)');
SELECT throws_ok($$UPDATE ops.exceptions SET status = 'approved', revoked_by = NULL, revoked_at = NULL, revoke_comment = NULL
                    WHERE exception_id = 'd6e00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'and cannot be approved again without it (revoked is final)');
SELECT throws_ok($$UPDATE ops.exceptions SET revoked_by = 'rm-2' WHERE exception_id = 'd6e00000-0000-4000-8000-000000000003'$$,
                 '23514', NULL, 'a revoker on an exception that is not revoked is refused (CHECK exception_revocation_recorded)');
SELECT is((SELECT string_agg(status || '/' || coalesce(decided_by, '-'), ',' ORDER BY exception_id) FROM ops.exceptions
            WHERE release_id = 'd6000000-0000-4000-8000-000000000001'),
          'revoked/rm-1,rejected/rm-2,requested/-', 'the three exceptions end revoked (approved by rm-1), rejected and requested');

-- ==== Deployments: G4 through a failed deployment (ci_service_role) ================================
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "ci-bot", "role": "ci_service_role"}';
SELECT is(ops.ingest_event(pg_temp.ev('dw-d-dep1', 'deployment_started', '{"environment": "staging", "deployment_id": "d6d00000-0000-4000-8000-000000000001"}',
                                      'd6000000-0000-4000-8000-000000000002')) ->> 'status', 'accepted', 'ci starts a staging deployment through ingest');
SELECT is(ops.ingest_event(pg_temp.ev('dw-d-dep1-fin', 'deployment_finished', '{"deployment_id": "d6d00000-0000-4000-8000-000000000001", "status": "failed"}',
                                      'd6000000-0000-4000-8000-000000000002')) ->> 'status', 'accepted', 'and reports it failed');
SELECT lives_ok($$INSERT INTO ops.evidence_artifacts (release_id, gate_id, artifact_type, uri, submitted_by)
                  SELECT release_id, gate_id, 'health_check', 'https://health/dw-d', 'ci-bot' FROM ops.release_gates
                   WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G4'$$,
                'ci attaches a health_check artifact directly');
SELECT throws_ok($$UPDATE ops.deployments SET g4_status = 'passed' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '23514', NULL, 'ci cannot mark the failed deployment''s health passed (CHECK deployment_health_after_success)');
SELECT throws_ok($$UPDATE ops.deployments SET status = 'succeeded' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'nor turn the failed deployment into a success');
SELECT throws_ok($$UPDATE ops.deployments SET status = 'succeeded', g4_status = 'passed' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'nor both at once');
SELECT throws_ok($$UPDATE ops.deployments SET status = 'started', finished_at = NULL WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'nor restart it');
SELECT throws_ok($$INSERT INTO ops.deployments (release_id, environment, status, g4_status, deployed_by, finished_at)
                   VALUES ('d6000000-0000-4000-8000-000000000002', 'staging', 'succeeded', 'passed', 'ci-bot', now())$$,
                 '22023', NULL, 'nor insert a deployment that already succeeded with health passed');
SELECT throws_ok($$UPDATE ops.deployments SET status = 'rolled_back' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '22023', NULL, 'a rollback needs a reason');
SELECT lives_ok($$UPDATE ops.deployments SET status = 'rolled_back', rollback_reason = 'failed halfway' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                'ci rolls the failed deployment back, with a reason');
SELECT throws_ok($$UPDATE ops.deployments SET g4_status = 'passed' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'a rolled-back deployment gets no health result either');
SELECT throws_ok($$UPDATE ops.deployments SET rollback_reason = 'never happened' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'and its rollback cannot be rewritten');
RESET ROLE;
SELECT is((SELECT status || '/' || g4_status || '/' || rollback_reason || '/' || (finished_at IS NOT NULL) || '/' || (rolled_back_at IS NOT NULL)
             FROM ops.deployments WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000001'),
          'rolled_back/pending/failed halfway/true/true', 'the deployment is failed-then-rolled-back, health pending');
SELECT is((SELECT count(*)::int FROM ops.deployments WHERE release_id = 'd6000000-0000-4000-8000-000000000002'), 1, 'no other deployment was written');
SELECT isnt((SELECT status FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G4'), 'passed',
            'G4 did not pass');

-- ==== Deployments: the legitimate direct path (ci_service_role) ====================================
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "ci-bot", "role": "ci_service_role"}';
SELECT lives_ok($$INSERT INTO ops.deployments (deployment_id, release_id, environment, deployed_by, external_ref)
                  VALUES ('d6d00000-0000-4000-8000-000000000002', 'd6000000-0000-4000-8000-000000000002', 'staging', 'ci-bot', 'gha-run-7')$$,
                'ci records a staging deployment directly (started)');
SELECT throws_ok($$UPDATE ops.deployments SET g4_status = 'passed' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                 '23514', NULL, 'no health result before it succeeds');
SELECT throws_ok($$UPDATE ops.deployments SET status = 'succeeded', finished_at = now() - interval '1 hour'
                    WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                 '22023', NULL, 'a backdated finish is refused (finished_at is the time of the write)');
SELECT lives_ok($$UPDATE ops.deployments SET status = 'succeeded' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                'it succeeds');
SELECT lives_ok($$UPDATE ops.deployments SET g4_status = 'passed' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                'its health check passes');
SELECT throws_ok($$UPDATE ops.deployments SET g4_status = 'pending' WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                 '55000', NULL, 'health never goes back to pending');
SELECT throws_ok($$UPDATE ops.deployments SET finished_at = clock_timestamp() WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'$$,
                 '55000', NULL, 'finished_at is set once');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G4'), 'in_progress',
          'the health_check artifact attached before this deployment does not speak for it: G4 waits');
SELECT lives_ok($$INSERT INTO ops.evidence_artifacts (release_id, gate_id, artifact_type, uri, submitted_by)
                  SELECT release_id, gate_id, 'health_check', 'https://health/dw-d2', 'ci-bot' FROM ops.release_gates
                   WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G4'$$,
                'ci attaches this deployment''s health_check artifact');
RESET ROLE;
SELECT is((SELECT status || '/' || g4_status || '/' || (finished_at BETWEEN now() AND clock_timestamp())
             FROM ops.deployments WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000002'),
          'succeeded/passed/true', 'succeeded with health passed, finished_at recorded by the database');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G4'), 'passed',
          'G4 passes the legitimate way');
-- Direct writes get what ingest gives the same moves: the environment's timeline, in the
-- writer's name, and the release's status (the direct rollback of the first deployment made it
-- rolled_back, which a later staging success does not undo, as through ingest).
SELECT is((SELECT string_agg(event_kind || ':' || recorded_by, ',' ORDER BY event_id) FROM ops.environment_events
            WHERE deployment_id IN ('d6d00000-0000-4000-8000-000000000001', 'd6d00000-0000-4000-8000-000000000002')),
          'deployment_started:ci-bot,deployment_failed:ci-bot,rollback:ci-bot,deployment_started:ci-bot,deployment_succeeded:ci-bot,health_check:ci-bot',
          'direct deployment writes are on the timeline (the first two through ingest), in the writer''s name');
SELECT is((SELECT status FROM ops.releases WHERE release_id = 'd6000000-0000-4000-8000-000000000002'), 'rolled_back',
          'and the direct rollback moved the release as a rollback event does');

-- ==== Incidents (sre) ================================================================================
SET LOCAL ROLE sre;
SET LOCAL request.jwt.claims = '{"sub": "sre-1", "role": "sre"}';
SELECT throws_ok($$INSERT INTO ops.incidents (environment, severity, summary, opened_by, status, resolved_at, resolution)
                   VALUES ('production', 'sev2', 'nothing to see', 'sre-1', 'resolved', now(), 'it was fine')$$,
                 '22023', NULL, 'sre cannot record an incident already resolved');
SELECT throws_ok($$INSERT INTO ops.incidents (environment, severity, summary, opened_by, opened_at)
                   VALUES ('production', 'sev2', 'old news', 'sre-1', now() - interval '2 days')$$,
                 '22023', NULL, 'nor backdate its opening');
SELECT lives_ok($$INSERT INTO ops.incidents (incident_id, environment, severity, summary, opened_by)
                  VALUES ('d6100000-0000-4000-8000-000000000001', 'production', 'sev2', 'p99 latency', 'sre-1')$$,
                'sre opens an incident directly');
SELECT lives_ok($$UPDATE ops.incidents SET status = 'resolved', resolution = 'scaled out' WHERE incident_id = 'd6100000-0000-4000-8000-000000000001'$$,
                'and resolves it, leaving resolved_at out');
SELECT throws_ok($$UPDATE ops.incidents SET status = 'open', resolved_at = NULL WHERE incident_id = 'd6100000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'a resolved incident cannot be reopened');
SELECT throws_ok($$UPDATE ops.incidents SET resolution = 'it fixed itself' WHERE incident_id = 'd6100000-0000-4000-8000-000000000001'$$,
                 '55000', NULL, 'nor its resolution rewritten');
RESET ROLE;
SELECT is((SELECT status || '/' || resolution || '/' || (resolved_at = now()) FROM ops.incidents WHERE incident_id = 'd6100000-0000-4000-8000-000000000001'),
          'resolved/scaled out/true', 'the incident is resolved once, at the time of the write');
SELECT is((SELECT count(*)::int FROM ops.incidents WHERE opened_by = 'sre-1'), 1, 'no other incident was written');
SELECT is((SELECT string_agg(event_kind, ',' ORDER BY event_id) FROM ops.environment_events
            WHERE detail ->> 'incident_id' = 'd6100000-0000-4000-8000-000000000001'),
          'incident_opened,incident_resolved', 'the incident''s opening and resolution are on the timeline');

-- ==== Values and times of the other direct writes =====================================================
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "ci-bot", "role": "ci_service_role"}';
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system, recorded_at)
                   SELECT gate_id, release_id, 'sast', 'pass', 'ci-bot', 'github_actions', '2999-01-01 00:00:00+00' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '22023', NULL, 'ci cannot date a check in the future to make it the latest result forever');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
                   SELECT gate_id, release_id, E'sast\u0007', 'pass', 'ci-bot', 'github_actions' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '23514', NULL, 'a check name with a control character is refused');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
                   SELECT gate_id, release_id, 'sast', 'pass', 'ci-bot', 'github actions!' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '23514', NULL, 'so is a source_system outside A-Za-z0-9_.:/-');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, reported_by, source_system)
                   SELECT gate_id, release_id, 'sast', 'passed', 'ci-bot', 'github_actions' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '23514', 'new row for relation "gate_checks" violates check constraint "gate_checks_status_check"',
                 'a check status outside pass, fail, pending, skipped is refused');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, run_id, reported_by, source_system)
                   SELECT gate_id, release_id, 'sast', 'pass', '   ', 'ci-bot', 'github_actions' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '23514', NULL, 'so is a blank run_id');
SELECT throws_ok($$INSERT INTO ops.gate_checks (gate_id, release_id, check_name, status, details_url, reported_by, source_system)
                   SELECT gate_id, release_id, 'sast', 'pass', 'ci/runs/7', 'ci-bot', 'github_actions' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G1'$$,
                 '23514', NULL, 'and a details_url that is not an absolute URI');
SELECT is((SELECT count(*)::int FROM ops.gate_checks WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND check_name = 'sast'), 0,
          'none of the refused check results was written');
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (release_id, artifact_type, uri, submitted_by)
                   VALUES ('d6000000-0000-4000-8000-000000000001', 'test_report', 'see the wiki', 'ci-bot')$$,
                 '23514', NULL, 'evidence needs an absolute URI');
-- A qa_signoff alone passes G2: only the personas who sign G2 off attach one.
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (release_id, artifact_type, uri, submitted_by)
                   VALUES ('d6000000-0000-4000-8000-000000000001', 'qa_signoff', 'https://x.example/fake', 'ci-bot')$$,
                 '42501', NULL, 'ci cannot attach a qa_signoff directly');
SELECT is(ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'dw-fake-qa', 'event_type', 'evidence_attached',
              'source_system', 'github_actions', 'release_id', 'd6000000-0000-4000-8000-000000000001',
              'artifact_type', 'qa_signoff', 'uri', 'https://x.example/fake')) #>> '{detail,http_status}', '403',
          'nor through ingest (403)');
SELECT is((SELECT count(*)::int FROM ops.evidence_artifacts WHERE uri = 'https://x.example/fake'), 0, 'and no such artifact was written');
-- Evidence belongs to the release of the gate or check it is attached to (filled in when
-- omitted), and a check it names is of the gate it names: for every writer (23514).
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (release_id, gate_id, artifact_type, uri, submitted_by)
                   SELECT 'd6000000-0000-4000-8000-000000000001', gate_id, 'test_report', 'https://x.example/mixed', 'ci-bot'
                     FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G1'$$,
                 '23514', NULL, 'evidence of one release attached to another release''s gate is refused');
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (release_id, check_id, artifact_type, uri, submitted_by)
                   SELECT 'd6000000-0000-4000-8000-000000000001', check_id, 'test_report', 'https://x.example/mixed', 'ci-bot'
                     FROM ops.gate_checks WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND check_name = 'build'$$,
                 '23514', NULL, 'so is one attached to another release''s check');
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (release_id, gate_id, check_id, artifact_type, uri, submitted_by)
                   SELECT g.release_id, g.gate_id, c.check_id, 'test_report', 'https://x.example/mixed', 'ci-bot'
                     FROM ops.release_gates g, ops.gate_checks c
                    WHERE g.release_id = 'd6000000-0000-4000-8000-000000000002' AND g.gate_code = 'G2'
                      AND c.release_id = g.release_id AND c.check_name = 'build'$$,
                 '23514', NULL, 'and one attached to a gate and a check of another gate');
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (gate_id, check_id, artifact_type, uri, submitted_by)
                   SELECT g.gate_id, c.check_id, 'test_report', 'https://x.example/mixed', 'ci-bot'
                     FROM ops.release_gates g, ops.gate_checks c
                    WHERE g.release_id = 'd6000000-0000-4000-8000-000000000001' AND g.gate_code = 'G1'
                      AND c.release_id = 'd6000000-0000-4000-8000-000000000002' AND c.check_name = 'build'$$,
                 '23514', NULL, 'and one attached to a gate of one release and a check of another');
SELECT is((SELECT count(*)::int FROM ops.evidence_artifacts WHERE uri = 'https://x.example/mixed'), 0, 'none of them was written');
SELECT lives_ok($$INSERT INTO ops.evidence_artifacts (gate_id, artifact_type, uri, submitted_by)
                  SELECT gate_id, 'test_report', 'https://x.example/gate-only', 'ci-bot'
                    FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND gate_code = 'G1'$$,
                'evidence attached to a gate alone is written');
SELECT is((SELECT release_id::text FROM ops.evidence_artifacts WHERE uri = 'https://x.example/gate-only'),
          'd6000000-0000-4000-8000-000000000002', '  with its gate''s release');
SELECT lives_ok($$INSERT INTO ops.evidence_artifacts (release_id, gate_id, check_id, artifact_type, uri, submitted_by)
                  SELECT g.release_id, g.gate_id, c.check_id, 'build_log', 'https://x.example/build.log', 'ci-bot'
                    FROM ops.release_gates g JOIN ops.gate_checks c ON c.gate_id = g.gate_id
                   WHERE g.release_id = 'd6000000-0000-4000-8000-000000000002' AND g.gate_code = 'G1' AND c.check_name = 'build'$$,
                'evidence of a release, its gate and a check of that gate is written');
SELECT is(ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'dw-mixed', 'event_type', 'evidence_attached',
              'source_system', 'github_actions', 'release_id', 'd6000000-0000-4000-8000-000000000002', 'gate_code', 'G2',
              'check_id', (SELECT check_id FROM ops.gate_checks WHERE release_id = 'd6000000-0000-4000-8000-000000000002' AND check_name = 'build'),
              'artifact_type', 'test_report', 'uri', 'https://x.example/mixed')) #>> '{detail,error}', 'unknown_reference',
          'through ingest, a check of another gate than the one named is an unknown reference (409)');
SELECT throws_ok($$INSERT INTO ops.releases (release_id, version, created_by, source_system) VALUES ('d6000000-0000-4000-8000-000000000009', '   ', 'ci-bot', 'github_actions')$$,
                 '23514', NULL, 'a release with a blank version is refused');
SELECT lives_ok($$INSERT INTO ops.releases (release_id, version, created_by, source_system) VALUES ('d6000000-0000-4000-8000-000000000004', 'dw-direct', 'ci-bot', 'github_actions')$$,
                'ci creates a release directly');
SELECT is((SELECT string_agg(gate_code || '=' || status, ',' ORDER BY gate_code) FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000004'),
          'G1=pending,G2=pending,G3=pending,G4=pending', 'and it gets its four gates, as release_created gives them');
RESET ROLE;
SET LOCAL ROLE qa_tester;
SET LOCAL request.jwt.claims = '{"sub": "qa-1", "role": "qa_tester"}';
SELECT throws_ok($$INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision, recorded_at)
                   SELECT release_id, gate_id, 'qa-1', 'qa_tester', 'approved', '2999-01-01 00:00:00+00' FROM ops.release_gates
                    WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G2'$$,
                 '22023', NULL, 'qa cannot date a signoff in the future to outrank every later one');
RESET ROLE;
SET LOCAL ROLE sre;
SET LOCAL request.jwt.claims = '{"sub": "sre-1", "role": "sre"}';
SELECT throws_ok($$INSERT INTO ops.recovery_drills (environment, drill_type, outcome, rto_seconds, performed_by)
                   VALUES ('staging', 'failover', 'passed', 40000000, 'sre-1')$$,
                 '23514', NULL, 'a drill with an RTO over a year is refused');
SELECT throws_ok($$INSERT INTO ops.environment_events (environment, event_kind, detail, recorded_by) VALUES ('staging', 'config_change', '[1, 2]', 'sre-1')$$,
                 '23514', NULL, 'an environment event''s detail must be an object');
SELECT throws_ok($$INSERT INTO ops.environment_events (event_id, environment, event_kind, recorded_by) OVERRIDING SYSTEM VALUE
                   SELECT g, 'staging', 'config_change', 'sre-1' FROM generate_series(900000, 900010) g$$,
                 '42501', NULL, 'nor may a persona choose its event_id (taking the ids later ingests would get)');
RESET ROLE;
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT throws_ok($$UPDATE ops.releases SET title = E'line\none' WHERE release_id = 'd6000000-0000-4000-8000-000000000001'$$,
                 '23514', NULL, 'a release title is one line');
RESET ROLE;
SELECT is((SELECT (SELECT count(*) FROM ops.gate_checks WHERE release_id = 'd6000000-0000-4000-8000-000000000001')
                + (SELECT count(*) FROM ops.approvals WHERE release_id = 'd6000000-0000-4000-8000-000000000001')
                + (SELECT count(*) FROM ops.evidence_artifacts WHERE release_id = 'd6000000-0000-4000-8000-000000000001')
                + (SELECT count(*) FROM ops.releases WHERE release_id = 'd6000000-0000-4000-8000-000000000009')
                + (SELECT count(*) FROM ops.recovery_drills WHERE performed_by = 'sre-1')
                + (SELECT count(*) FROM ops.environment_events WHERE recorded_by = 'sre-1' AND event_kind = 'config_change'))::int, 0,
          'none of the refused rows was written');

-- ==== Ingest still passes: the same moves through ops.ingest_event, each by its persona ==============
SET LOCAL ROLE developer;
SET LOCAL request.jwt.claims = '{"sub": "dev-1", "role": "developer"}';
SELECT is(ops.ingest_event(pg_temp.ev('dw-i-exc', 'exception_requested',
              jsonb_build_object('gate_code', 'G3', 'reason', E'waiting on\nthe vendor', 'expires_at', now() + interval '89 days',
                                 'exception_id', 'd6e00000-0000-4000-8000-000000000009'),
              'd6000000-0000-4000-8000-000000000003')) ->> 'status', 'accepted', 'ingest: developer requests an exception');
RESET ROLE;
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT is(ops.ingest_event(pg_temp.ev('dw-i-exc-ok', 'exception_decided', '{"exception_id": "d6e00000-0000-4000-8000-000000000009", "decision": "approved", "comment": "ok"}',
              'd6000000-0000-4000-8000-000000000003')) ->> 'status', 'accepted', 'ingest: a release manager approves it');
SELECT is(ops.ingest_event(pg_temp.ev('dw-i-exc-rv', 'exception_decided', '{"exception_id": "d6e00000-0000-4000-8000-000000000009", "decision": "revoked", "comment": "vendor shipped"}',
              'd6000000-0000-4000-8000-000000000003')) ->> 'status', 'accepted', 'ingest: and revokes it');
SELECT is((SELECT status || '/' || decided_by || '/' || decision_comment || '/' || revoked_by || '/' || revoke_comment || '/' || (revoked_at = now())
             FROM ops.exceptions WHERE exception_id = 'd6e00000-0000-4000-8000-000000000009'),
          'revoked/rm-1/ok/rm-1/vendor shipped/true', 'ingest: the revocation is recorded beside the approval');
RESET ROLE;
SET LOCAL ROLE ci_service_role;
SET LOCAL request.jwt.claims = '{"sub": "ci-bot", "role": "ci_service_role"}';
SELECT is((SELECT string_agg(ops.ingest_event(pg_temp.ev(k, t, f::jsonb, 'd6000000-0000-4000-8000-000000000003')) ->> 'status', ',' ORDER BY n)
             FROM (VALUES (1, 'dw-i-d1', 'deployment_started', '{"environment": "dev", "deployment_id": "d6d00000-0000-4000-8000-000000000009", "external_ref": "gha-9"}'),
                          (2, 'dw-i-d2', 'deployment_finished', '{"deployment_id": "d6d00000-0000-4000-8000-000000000009", "status": "succeeded"}'),
                          (3, 'dw-i-d3', 'health_check', '{"deployment_id": "d6d00000-0000-4000-8000-000000000009", "status": "fail", "uri": "https://health/9"}'),
                          (4, 'dw-i-d4', 'health_check', '{"deployment_id": "d6d00000-0000-4000-8000-000000000009", "status": "pass", "uri": "https://health/9b"}'),
                          (5, 'dw-i-d5', 'rollback', '{"deployment_id": "d6d00000-0000-4000-8000-000000000009", "reason": "bad config\n\tin prod"}'),
                          (6, 'dw-i-c1', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "skipped", "run_id": 9, "details_url": "https://ci/9"}'),
                          (7, 'dw-i-e1', 'evidence_attached', '{"artifact_type": "runbook", "uri": "s3://bucket/runbook.md", "description": "how to\nroll back"}'))
                  AS s(n, k, t, f)),
          'accepted,accepted,accepted,accepted,accepted,accepted,accepted', 'ingest: a deployment started, finished, health-checked twice, rolled back; a check; evidence');
RESET ROLE;
SELECT is((SELECT status || '/' || g4_status || '/' || (finished_at IS NOT NULL) || '/' || (rolled_back_at IS NOT NULL)
             FROM ops.deployments WHERE deployment_id = 'd6d00000-0000-4000-8000-000000000009'),
          'rolled_back/passed/true/true', 'and the deployment row shows it');
SET LOCAL ROLE sre;
SET LOCAL request.jwt.claims = '{"sub": "sre-2", "role": "sre"}';
SELECT is((SELECT string_agg(ops.ingest_event(pg_temp.ev(k, t, f::jsonb, 'd6000000-0000-4000-8000-000000000003')) ->> 'status', ',' ORDER BY n)
             FROM (VALUES (1, 'dw-i-i1', 'incident_opened', '{"environment": "production", "severity": "sev1", "summary": "outage\nall regions", "incident_id": "d6100000-0000-4000-8000-000000000009"}'),
                          (2, 'dw-i-i2', 'incident_resolved', '{"incident_id": "d6100000-0000-4000-8000-000000000009", "resolution": "failed over"}'),
                          (3, 'dw-i-r1', 'recovery_drill', '{"environment": "staging", "drill_type": "failover", "outcome": "passed", "rto_seconds": 31536000, "rpo_seconds": 0, "uri": "https://drills/1"}'),
                          (4, 'dw-i-v1', 'environment_event', '{"environment": "staging", "event_kind": "config_change", "detail": {"key": "value"}}'))
                  AS s(n, k, t, f)),
          'accepted,accepted,accepted,accepted', 'ingest: an incident opened and resolved, a drill, an environment event');
RESET ROLE;
SELECT is(ops.ingest_event(pg_temp.ev('dw-i-exc-long', 'exception_requested',
              jsonb_build_object('gate_code', 'G3', 'reason', 'x', 'expires_at', now() + interval '91 days'),
              'd6000000-0000-4000-8000-000000000003')) #>> '{detail,error}', 'invalid_field', 'ingest still refuses 91 days itself (400)');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log WHERE idempotency_key LIKE 'dw-i-%' AND processing_status = 'accepted'), 14,
          'every ingest event above was accepted, none failed on the new rules');

-- Which requirements are defaults (left out of dumps, made by CREATE EXTENSION) follows the pair.
DELETE FROM ops.environment_gate_requirements WHERE environment = 'production' AND gate_code = 'G4';
INSERT INTO ops.environment_gate_requirements (environment, gate_code) VALUES ('production', 'G4'), ('staging', 'G3');
SELECT is((SELECT string_agg(environment || ' ' || gate_code || ' ' || is_default, ',' ORDER BY environment)
             FROM ops.environment_gate_requirements WHERE (environment, gate_code) IN (('production', 'G4'), ('staging', 'G3'))),
          'production G4 true,staging G3 false', 'a default written again is a default (not dumped twice); another row is not');
UPDATE ops.environment_gate_requirements SET is_default = true WHERE environment = 'staging' AND gate_code = 'G3';
SELECT is((SELECT is_default FROM ops.environment_gate_requirements WHERE environment = 'staging' AND gate_code = 'G3'), false,
          'and a row cannot be made a default (it would be left out of dumps)');

-- The 90 days are hours, whatever the session's time zone: an exception made at the limit in
-- January (UTC) is valid in a New York session too, where 90 calendar days from it end an hour
-- earlier (clocks go forward in March).
RESET ROLE;
SET LOCAL TimeZone = 'America/New_York';
SELECT lives_ok($$INSERT INTO ops.exceptions (release_id, gate_id, reason, requested_by, expires_at, created_at)
                  SELECT release_id, gate_id, 'at the limit', 'dev-1', '2026-04-10 12:00:00+00', '2026-01-10 12:00:00+00'
                    FROM ops.release_gates WHERE release_id = 'd6000000-0000-4000-8000-000000000001' AND gate_code = 'G3'$$,
                'an exception of exactly 2160 hours is valid in a session across a daylight-saving change');
RESET TimeZone;

SELECT * FROM finish();
ROLLBACK;

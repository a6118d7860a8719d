-- Release gates: ops.ingest_event outcomes with their HTTP statuses and
-- log rows, a table of malformed envelopes (each rejected with its documented status, nothing but
-- the log row written), the gate rules through events, exceptions and their expiry,
-- the promotion block, and the DDL guarantees.
BEGIN;
SELECT plan(188);

-- Everything a handler may write, to prove a rejection wrote none of it.
CREATE FUNCTION pg_temp.domain_rows() RETURNS bigint LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM ops.releases) + (SELECT count(*) FROM ops.release_gates)
         + (SELECT count(*) FROM ops.gate_checks) + (SELECT count(*) FROM ops.approvals)
         + (SELECT count(*) FROM ops.evidence_artifacts) + (SELECT count(*) FROM ops.exceptions)
         + (SELECT count(*) FROM ops.deployments) + (SELECT count(*) FROM ops.environment_events)
         + (SELECT count(*) FROM ops.incidents) + (SELECT count(*) FROM ops.recovery_drills)
$$;
-- An envelope for release R1 with the common fields filled in.
CREATE FUNCTION pg_temp.ev(key text, type text, fields jsonb DEFAULT '{}',
                           release text DEFAULT 'a0000000-0000-4000-8000-000000000001') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('schema_version', '1.0', 'idempotency_key', key, 'event_type', type,
                              'source_system', 'github_actions', 'release_id', release) || fields
$$;

-- Time passes and a release's bypass of a gate expires, with no write to trigger a re-evaluation
-- (moving the clock is simulated by moving expires_at with the exceptions' trigger off).
CREATE FUNCTION pg_temp.expire_bypass(release uuid, gate text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE ops.exceptions DISABLE TRIGGER refresh_gates_update;
    UPDATE ops.exceptions x SET expires_at = now() - interval '1 second'
      FROM ops.release_gates g WHERE g.gate_id = x.gate_id AND g.release_id = release AND g.gate_code = gate;
    UPDATE ops.release_gates SET bypass_expires_at = now() - interval '1 second'
     WHERE release_id = release AND gate_code = gate;
    ALTER TABLE ops.exceptions ENABLE TRIGGER refresh_gates_update;
END
$$;

-- ---- The schema ------------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM pg_tables WHERE schemaname = 'ops'
            AND tablename IN ('releases', 'release_gates', 'gate_checks', 'approvals', 'evidence_artifacts', 'exceptions',
                              'deployments', 'environment_events', 'event_ingest_log', 'incidents', 'recovery_drills')),
          11, 'the 11 ops tables exist');
SELECT is((SELECT count(*)::int FROM pg_extension e, unnest(e.extconfig) c
            WHERE e.extname = 'flowgate' AND c::regclass::text LIKE 'ops.%'), 13,
          'every ops table (and the environment_events sequence) is registered with pg_extension_config_dump');
SELECT is((SELECT count(*)::int FROM information_schema.columns
            WHERE table_schema = 'ops' AND column_name = 'created_at' AND is_nullable = 'NO'
              AND column_default = 'now()' AND data_type = 'timestamp with time zone'), 12,
          'every ops table has created_at timestamptz NOT NULL DEFAULT now()');
SELECT col_not_null('ops', 'exceptions', 'expires_at', 'exceptions.expires_at is NOT NULL');
SELECT ok((SELECT indisunique FROM pg_index WHERE indexrelid = 'ops.event_ingest_log_idempotency_key'::regclass),
          'a unique index on event_ingest_log(idempotency_key) (over accepted outcomes) deduplicates');
SELECT is((SELECT count(*)::int FROM pg_roles WHERE rolname IN ('ci_service_role', 'release_manager', 'qa_tester', 'sre', 'developer', 'audit_reader')
             AND NOT rolcanlogin), 6, 'the six persona roles exist, NOLOGIN');
SELECT is((SELECT count(*)::int FROM pg_views WHERE schemaname = 'ops' AND viewname IN
            ('v_release_gate_summary', 'v_promotion_eligibility', 'v_evidence_completeness', 'v_exception_status', 'v_deployment_history',
             'v_check_reports')),
          6, 'the six reporting views exist');
SELECT throws_ok($$INSERT INTO ops.evidence_artifacts (artifact_type, uri, submitted_by) VALUES ('test_report', 'https://x', 'me')$$,
                 '23514', NULL, 'evidence other than a reference must be attached to a release, gate or check');
SELECT lives_ok($$INSERT INTO ops.evidence_artifacts (artifact_type, uri, submitted_by) VALUES ('reference', 'https://runbook', 'me')$$,
                'a free-standing reference artifact is allowed');

-- ---- Ingest outcomes --------------------------------------------------------------------------
SELECT is(ops.ingest_event(pg_temp.ev('rel-1', 'release_created', '{"version": "2026.11.1", "repository": "acme/erp"}')) ->> 'status',
          'accepted', 'release_created is accepted');
SELECT is(current_setting('response.status'), '200', 'and PostgREST answers 200');
SELECT is((SELECT string_agg(gate_code || '=' || status, ',' ORDER BY gate_code) FROM ops.release_gates
            WHERE release_id = 'a0000000-0000-4000-8000-000000000001'), 'G1=pending,G2=pending,G3=pending,G4=pending',
          'the release gets its four gates, pending');

CREATE TEMP TABLE first_build AS
SELECT ops.ingest_event(pg_temp.ev('github_actions/101/build_complete', 'build_complete', '{"status": "pass", "run_id": 101}')) AS r;
SELECT is((SELECT r ->> 'status' FROM first_build), 'accepted', 'a build_complete event is accepted');
SELECT is((SELECT r #>> '{detail,gates,G1}' FROM first_build), 'passed', 'its detail reports G1 passed');
SELECT is((SELECT count(*)::int FROM ops.gate_checks WHERE run_id = '101'), 1, 'one G1 check row');
SELECT is((SELECT ingest_id::text FROM ops.gate_checks WHERE run_id = '101'), (SELECT r ->> 'ingest_id' FROM first_build),
          'the check row names the ingest record it came from');

SELECT pg_temp.domain_rows() AS before \gset
CREATE TEMP TABLE retry AS
SELECT ops.ingest_event(pg_temp.ev('github_actions/101/build_complete', 'build_complete', '{"status": "pass", "run_id": 101}')) AS r;
SELECT is((SELECT r ->> 'status' FROM retry), 'duplicate', 'the same key again is a duplicate');
SELECT is((SELECT r ->> 'ingest_id' FROM retry), (SELECT r ->> 'ingest_id' FROM first_build), 'it returns the original ingest_id');
SELECT is((SELECT r -> 'detail' FROM retry), (SELECT r -> 'detail' FROM first_build), 'and the original result');
SELECT is((SELECT r FROM retry), (SELECT f.r || jsonb_build_object('status', 'duplicate', 'receipt_id', t.r ->> 'receipt_id')
                                     FROM first_build f, retry t),
          'the whole answer is the original one, marked duplicate, with its own receipt_id');
SELECT is(current_setting('response.status'), '200', 'with HTTP 200');
SELECT is(pg_temp.domain_rows(), :before::bigint, 'a duplicate writes nothing but its log row');
SELECT is((SELECT processing_status || ' -> ' || original_ingest_id FROM ops.event_ingest_log
            WHERE ingest_id = (SELECT (r ->> 'receipt_id')::uuid FROM retry)),
          'duplicate -> ' || (SELECT r ->> 'ingest_id' FROM first_build), 'the duplicate log row points at the accepted one');
SELECT is((SELECT r ->> 'status' FROM (SELECT ops.ingest_event(pg_temp.ev('github_actions/101/build_complete', 'build_complete',
              '{"status": "fail", "run_id": 101}')) AS r) x), 'duplicate',
          'a retry with the same key but a different body is still the duplicate of the first (the key decides)');

-- Long keys are stored and compared whole: two keys that share their first 255 characters are
-- two events, and a key over the 256-character limit is a 400 that stores no key at all.
-- (A statement_timeout turns a regression that loops into a failure instead of a hang.)
SET LOCAL statement_timeout = '10s';
SELECT is(ops.ingest_event(pg_temp.ev(repeat('k', 255) || 'a', 'build_complete', '{"status": "pass", "run_id": 201}')) ->> 'status',
          'accepted', 'a 256-character key is accepted');
SELECT is(ops.ingest_event(pg_temp.ev(repeat('k', 255) || 'b', 'build_complete', '{"status": "pass", "run_id": 202}')) ->> 'status',
          'accepted', 'a second key sharing its first 255 characters is another event, not a duplicate and no loop');
SELECT is(ops.ingest_event(pg_temp.ev(repeat('k', 255) || 'b', 'build_complete', '{"status": "pass", "run_id": 202}')) ->> 'status',
          'duplicate', 'the same 256-character key again is its duplicate');
SELECT is((SELECT string_agg(DISTINCT length(idempotency_key)::text, ',') FROM ops.event_ingest_log WHERE idempotency_key LIKE 'kkkk%'),
          '256', 'the log stores the whole key, never a cut one');
SELECT pg_temp.domain_rows() AS before \gset
CREATE TEMP TABLE long_key AS
SELECT ops.ingest_event(pg_temp.ev(repeat('k', 257), 'build_complete', '{"status": "pass", "run_id": 203}')) AS r;
SELECT is((SELECT r #>> '{detail,error}' FROM long_key), 'invalid_field', 'a 257-character key is rejected');
SELECT is(current_setting('response.status'), '400', 'with HTTP 400');
SELECT is((SELECT idempotency_key IS NULL AND processing_status = 'rejected' FROM ops.event_ingest_log
            WHERE ingest_id = (SELECT (r ->> 'ingest_id')::uuid FROM long_key)), true, 'its log row keeps no (cut) key');
SELECT is(pg_temp.domain_rows(), :before::bigint, 'and nothing else is written');
RESET statement_timeout;

SELECT is(ops.ingest_event(pg_temp.ev('v9', 'build_complete', '{"status": "pass", "schema_version": "9.0"}')) #>> '{detail,error}',
          'unsupported_schema_version', 'an unknown schema_version is rejected');
SELECT is(current_setting('response.status'), '422', 'with HTTP 422');
SELECT is(ops.ingest_event(pg_temp.ev('nostatus', 'build_complete')) #>> '{detail,message}', 'missing field "status"',
          'a missing per-type field is named');
SELECT is(current_setting('response.status'), '400', 'with HTTP 400');
SELECT is(ops.ingest_event(pg_temp.ev('ghost', 'build_complete', '{"status": "pass"}', 'b0000000-0000-4000-8000-00000000dead'))
            #>> '{detail,error}', 'unknown_release', 'an event for an unknown release is rejected');
SELECT is(current_setting('response.status'), '409', 'with HTTP 409');
SELECT is((SELECT processing_status || ' ' || http_status FROM ops.event_ingest_log WHERE idempotency_key = 'ghost'), 'rejected 409',
          'the rejection is logged');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log WHERE idempotency_key = 'ghost' AND processing_status = 'accepted'), 0,
          'and does not take the key');

-- A rejected key is free: once the release exists, the same key is accepted.
SELECT is(ops.ingest_event(pg_temp.ev('rel-ghost', 'release_created', '{"version": "0.0.1"}', 'b0000000-0000-4000-8000-00000000dead')) ->> 'status',
          'accepted', 'the missing release is created');
SELECT is(ops.ingest_event(pg_temp.ev('ghost', 'build_complete', '{"status": "pass"}', 'b0000000-0000-4000-8000-00000000dead')) ->> 'status',
          'accepted', 'the key rejected with 409 is accepted on retry');

-- An internal error (a broken trigger) is a 500: logged, nothing else written, key not taken.
CREATE FUNCTION pg_temp.boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;
CREATE TRIGGER boom BEFORE INSERT ON ops.gate_checks FOR EACH ROW EXECUTE FUNCTION pg_temp.boom();
SELECT pg_temp.domain_rows() AS before \gset
SELECT is(ops.ingest_event(pg_temp.ev('boom-1', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "pass"}')) ->> 'status',
          'error', 'a failing handler is an error outcome');
SELECT is(current_setting('response.status'), '500', 'with HTTP 500');
SELECT is((SELECT processing_status || ' ' || http_status || ' ' || error_message FROM ops.event_ingest_log WHERE idempotency_key = 'boom-1'),
          'error 500 disk on fire (P0001)', 'the log row keeps the real error');
SELECT is(pg_temp.domain_rows(), :before::bigint, 'the handler''s writes were rolled back, the log row stayed');
DROP TRIGGER boom ON ops.gate_checks;
SELECT is(ops.ingest_event(pg_temp.ev('boom-1', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "pass"}')) ->> 'status',
          'accepted', 'after the fault is fixed the same key is accepted');

-- The log keeps the envelope as sent (a number at full precision) and the answer as answered.
CREATE TEMP TABLE exact_env AS SELECT pg_temp.ev('exact-1', 'check_result',
    '{"gate_code": "G1", "check_name": "exact", "status": "pass", "required": false, "x_run": 12345678901234567890.000000000000000001}') AS e;
CREATE TEMP TABLE exact_out AS SELECT ops.ingest_event(e) AS r FROM exact_env;
SELECT is((SELECT envelope FROM ops.event_ingest_log WHERE idempotency_key = 'exact-1'), (SELECT e FROM exact_env),
          'the log keeps the envelope exactly as sent, digits and all');
SELECT is((SELECT result FROM ops.event_ingest_log WHERE idempotency_key = 'exact-1'), (SELECT r FROM exact_out),
          'and the result exactly as answered');

-- A NULL envelope is refused and logged as JSON null (a NULL envelope column means "over the limit").
CREATE TEMP TABLE null_env AS SELECT ops.ingest_event(NULL) AS r;
SELECT is((SELECT r ->> 'status' FROM null_env), 'rejected', 'a NULL envelope is rejected');
SELECT is((SELECT envelope FROM ops.event_ingest_log WHERE ingest_id = (SELECT (r ->> 'ingest_id')::uuid FROM null_env)),
          'null'::jsonb, 'and logged as JSON null');

-- SQL metacharacters are data, never code.
SELECT is(ops.ingest_event(pg_temp.ev($k$x'); DROP TABLE ops.releases; --$k$, 'check_result',
              jsonb_build_object('gate_code', 'G1', 'check_name', $n$lint"; DELETE FROM ops.gate_checks; --$n$, 'status', 'pass', 'required', false)))
            ->> 'status', 'accepted', 'a key and a check name full of SQL metacharacters are accepted as text');
SELECT is((SELECT check_name FROM ops.gate_checks WHERE check_name LIKE 'lint%'), $n$lint"; DELETE FROM ops.gate_checks; --$n$,
          'and stored verbatim');
SELECT is((SELECT count(*)::int FROM ops.releases), 2, 'nothing was dropped or deleted');

-- ---- Malformed envelopes ------------------------------------------------------------------------
CREATE TEMP TABLE bad (n int, label text, envelope jsonb, http int, error text);
INSERT INTO bad VALUES
 (1, 'a JSON array', '[1, 2]', 400, 'invalid_field'),
 (2, 'a JSON string', '"build_complete"', 400, 'invalid_field'),
 (3, 'an empty object', '{}', 400, 'missing_field'),
 (4, 'schema_version as an object', pg_temp.ev('b4', 'build_complete', '{"status": "pass", "schema_version": {"v": 1}}'), 400, 'invalid_field'),
 (5, 'schema_version 2.0', pg_temp.ev('b5', 'build_complete', '{"status": "pass", "schema_version": "2.0"}'), 422, 'unsupported_schema_version'),
 (6, 'idempotency_key as a number', pg_temp.ev('x', 'build_complete', '{"status": "pass", "idempotency_key": 42}'), 400, 'invalid_field'),
 (7, 'idempotency_key of 300 characters', pg_temp.ev(repeat('k', 300), 'build_complete', '{"status": "pass"}'), 400, 'invalid_field'),
 (8, 'idempotency_key with a newline', pg_temp.ev(E'b8\nx', 'build_complete', '{"status": "pass"}'), 400, 'invalid_field'),
 (9, 'an unknown event_type', pg_temp.ev('b9', 'build_completed', '{"status": "pass"}'), 400, 'unknown_event_type'),
 (10, 'SQL in event_type', pg_temp.ev('b10', $q$build_complete'; DROP TABLE ops.releases; --$q$), 400, 'unknown_event_type'),
 (11, 'SQL in release_id', pg_temp.ev('b11', 'build_complete', '{"status": "pass"}', $q$'; DELETE FROM ops.releases; --$q$), 400, 'invalid_field'),
 (12, 'release_id as a number', pg_temp.ev('b12', 'build_complete', '{"status": "pass", "release_id": 123}'), 400, 'invalid_field'),
 (13, 'status as an array', pg_temp.ev('b13', 'build_complete', '{"status": ["pass"]}'), 400, 'invalid_field'),
 (14, 'status not pass|fail', pg_temp.ev('b14', 'build_complete', '{"status": "maybe"}'), 400, 'invalid_field'),
 (15, 'an unknown field', pg_temp.ev('b15', 'build_complete', '{"status": "pass", "statsu": "pass"}'), 400, 'invalid_field'),
 (16, 'a 70 KB envelope', pg_temp.ev('b16', 'build_complete', jsonb_build_object('status', 'pass', 'metadata', jsonb_build_object('blob', repeat('x', 70000)))), 413, 'payload_too_large'),
 (17, 'metadata as a string', pg_temp.ev('b17', 'build_complete', '{"status": "pass", "metadata": "x"}'), 400, 'invalid_field'),
 (18, 'evidence as an object', pg_temp.ev('b18', 'build_complete', '{"status": "pass", "evidence": {"uri": "x"}}'), 400, 'invalid_field'),
 (19, 'evidence with a URI that is not one', pg_temp.ev('b19', 'build_complete', '{"status": "pass", "evidence": [{"artifact_type": "build_log", "uri": "not a uri"}]}'), 400, 'invalid_field'),
 (20, '21 evidence items', pg_temp.ev('b20', 'build_complete', jsonb_build_object('status', 'pass', 'evidence',
        (SELECT jsonb_agg(jsonb_build_object('artifact_type', 'build_log', 'uri', 'https://ci/' || i)) FROM generate_series(1, 21) i))), 400, 'invalid_field'),
 (21, 'occurred_at that is not a time', pg_temp.ev('b21', 'build_complete', '{"status": "pass", "occurred_at": "yesterday"}'), 400, 'invalid_field'),
 (22, 'source_system with spaces', pg_temp.ev('b22', 'build_complete', '{"status": "pass", "source_system": "git hub"}'), 400, 'invalid_field'),
 (23, 'a missing release_id', pg_temp.ev('b23', 'build_complete', '{"status": "pass", "release_id": null}'), 400, 'missing_field'),
 (24, 'build_complete for G3', pg_temp.ev('b24', 'build_complete', '{"status": "pass", "gate_code": "G3"}'), 400, 'invalid_field'),
 (25, 'a gate that does not exist', pg_temp.ev('b25', 'check_result', '{"status": "pass", "gate_code": "G7", "check_name": "x"}'), 400, 'invalid_field'),
 (26, 'release_created twice', pg_temp.ev('b26', 'release_created', '{"version": "again"}'), 409, 'conflict'),
 (27, 'a deployment that does not exist', pg_temp.ev('b27', 'deployment_finished', '{"deployment_id": "c0000000-0000-4000-8000-000000000000", "status": "succeeded"}'), 409, 'unknown_reference'),
 (28, 'an exception without expiry', pg_temp.ev('b28', 'exception_requested', '{"gate_code": "G3", "reason": "hotfix"}'), 400, 'missing_field'),
 (29, 'an exception expiring in a year', pg_temp.ev('b29', 'exception_requested', jsonb_build_object('gate_code', 'G3', 'reason', 'x', 'expires_at', now() + interval '1 year')), 400, 'invalid_field'),
 (30, 'a JSON null', 'null', 400, 'invalid_field'),
 (31, 'occurred_at in year 0, which Postgres has not', pg_temp.ev('b31', 'build_complete', '{"status": "pass", "occurred_at": "0000-06-01T00:00:00Z"}'), 400, 'invalid_field'),
 (32, 'occurred_at with a +20:00 offset, past Postgres'' limit', pg_temp.ev('b32', 'build_complete', '{"status": "pass", "occurred_at": "2026-06-01T00:00:00+20:00"}'), 400, 'invalid_field'),
 (33, 'a number beyond a 64-bit float', pg_temp.ev('b33', 'build_complete', '{"status": "pass", "metadata": {"n": 1e400}}'), 400, 'invalid_field'),
 (34, 'metadata nested 70 levels deep', pg_temp.ev('b34', 'build_complete',
        ('{"status": "pass", "metadata": ' || repeat('{"a": ', 70) || '1' || repeat('}', 70) || '}')::jsonb), 400, 'invalid_field');
SELECT pg_temp.domain_rows() AS before \gset
SELECT count(*) AS logged_before FROM ops.event_ingest_log \gset
CREATE TEMP TABLE bad_out AS SELECT n, label, http, error, ops.ingest_event(envelope) AS r FROM bad ORDER BY n;
SELECT is((r #>> '{detail,http_status}') || ' ' || (r #>> '{detail,error}'), http || ' ' || error, label || ' is rejected: ' || http)
  FROM bad_out ORDER BY n;
SELECT is(pg_temp.domain_rows(), :before::bigint, 'the 34 malformed envelopes wrote nothing outside the log');
SELECT is((SELECT count(*)::int FROM ops.event_ingest_log) - :logged_before, 34, 'and exactly one log row each');
SELECT is((SELECT count(*)::int FROM bad_out o JOIN ops.event_ingest_log l ON l.ingest_id = (o.r ->> 'ingest_id')::uuid
            WHERE l.processing_status = 'rejected' AND l.http_status = o.http AND l.error = o.error), 34,
          'each log row records the rejection, its status and error code');
SELECT is((SELECT envelope_bytes > 70000 AND envelope IS NULL FROM ops.event_ingest_log l JOIN bad_out o
            ON l.ingest_id = (o.r ->> 'ingest_id')::uuid WHERE o.n = 16), true,
          'the oversized envelope is logged by size, not stored');

-- ---- The gate rules through events ------------------------------------------------------
-- R2: G1 and G2 pass, then an e2e check fails G2, which blocks staging and production.
SELECT ops.ingest_event(pg_temp.ev('r2', 'release_created', '{"version": "2"}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r2-gate', 'gate_configured', '{"gate_code": "G1", "required_checks": ["build", "unit"]}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r2-build', 'build_complete', '{"status": "pass"}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT is(ops.evaluate_gate((SELECT gate_id FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G1')),
          'in_progress', 'G1 waits for every configured required check');
SELECT ops.ingest_event(pg_temp.ev('r2-unit', 'check_result', '{"gate_code": "G1", "check_name": "unit", "status": "pass"}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r2-qa', 'gate_signoff', '{"report_url": "https://qa.example/r2"}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT ok(ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000002', 'staging'), 'G1 + G2 passed: eligible for staging');
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000002', 'production'), 'but not for production');
SELECT ops.ingest_event(pg_temp.ev('r2-e2e', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "fail", "required": false}', 'a0000000-0000-4000-8000-000000000002')) \g /dev/null
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G2'), 'failed',
          'a failing check fails G2, and ops.release_gates.status is already current');
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000002', 'staging'), 'G2 failed: not eligible for staging');
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000002', 'production'), 'G2 failed: not eligible for production');
SELECT is(ops.ingest_event(pg_temp.ev('r2-deploy', 'deployment_started', '{"environment": "staging"}', 'a0000000-0000-4000-8000-000000000002'))
            #>> '{detail,error}', 'conflict', 'a staging deployment of an ineligible release is refused (409)');
SELECT throws_ok($$INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('a0000000-0000-4000-8000-000000000002', 'production', 'me')$$,
                 '55000', NULL, 'and so is a direct production insert (promotion block trigger)');
SELECT lives_ok($$INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('a0000000-0000-4000-8000-000000000002', 'dev', 'me')$$,
                'dev requires no gates');
SELECT throws_ok($$UPDATE ops.deployments SET environment = 'production' WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND environment = 'dev'$$,
                 '55000', NULL, 'nor may a dev deployment be moved to production (the promotion block guards updates too)');

-- A key is its sender's: another caller sending an accepted key gets a 409 that says nothing of
-- the original, and the original's sender still gets its duplicate.
SET LOCAL request.jwt.claims = '{"sub": "ci-one", "role": "ci_service_role"}';
SELECT is(ops.ingest_event(pg_temp.ev('mine/1', 'check_result', '{"gate_code": "G1", "check_name": "own", "status": "pass"}',
              'a0000000-0000-4000-8000-000000000002')) ->> 'status', 'accepted', 'setup: ci-one''s check is accepted');
SET LOCAL request.jwt.claims = '{"sub": "ci-two", "role": "ci_service_role"}';
CREATE TEMP TABLE other_sender AS SELECT ops.ingest_event(pg_temp.ev('mine/1', 'check_result',
    '{"gate_code": "G1", "check_name": "own", "status": "pass"}', 'a0000000-0000-4000-8000-000000000002')) AS r;
SELECT is((SELECT (r #>> '{detail,http_status}') || ' ' || (r #>> '{detail,error}') || ' ' || (r ->> 'status') FROM other_sender),
          '409 conflict rejected', 'another sender''s envelope with that key is a 409 conflict');
SELECT is((SELECT l.processing_status || ' ' || l.received_by || ' ' || (l.original_ingest_id IS NULL)::text
             FROM ops.event_ingest_log l JOIN other_sender o ON l.ingest_id = (o.r ->> 'ingest_id')::uuid),
          'rejected ci-two true', 'logged as its own rejection, pointing at nothing');
SELECT ok((SELECT NOT (r::text LIKE '%check_id%') AND NOT (r::text LIKE '%ci-one%') FROM other_sender),
          'and the answer holds nothing of the original (no check_id, no sender)');
SET LOCAL request.jwt.claims = '{"sub": "ci-one", "role": "ci_service_role"}';
SELECT is(ops.ingest_event(pg_temp.ev('mine/1', 'check_result', '{"gate_code": "G1", "check_name": "own", "status": "pass"}',
              'a0000000-0000-4000-8000-000000000002')) ->> 'status', 'duplicate', 'the original sender gets its duplicate');
RESET request.jwt.claims;
-- A persona token without a subject (every holder would be one actor) is refused, logged.
CREATE TEMP TABLE approvals_before AS SELECT count(*) AS n FROM ops.approvals;
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"role": "release_manager"}';
CREATE TEMP TABLE nameless AS SELECT ops.ingest_event(pg_temp.ev('nameless-1', 'approval',
    '{"decision": "approved", "evidence": [{"artifact_type": "rollback_plan", "uri": "https://wiki.example/n/rollback"}]}',
    'a0000000-0000-4000-8000-000000000002')) AS r;
RESET ROLE;
RESET request.jwt.claims;
SELECT is((SELECT (r ->> 'status') || ' ' || (r #>> '{detail,http_status}') FROM nameless)
            || ' ' || ((SELECT count(*) FROM ops.approvals) = (SELECT n FROM approvals_before))::text,
          'rejected 403 true', 'a JWT with no subject is refused (403, logged) and approves nothing');
-- Refused before anything the parse found: a malformed envelope from it is a 403 too, and
-- its answer says nothing of the envelope's checks.
SET LOCAL ROLE release_manager;
SET LOCAL request.jwt.claims = '{"role": "release_manager"}';
CREATE TEMP TABLE nameless_bad AS SELECT ops.ingest_event('{"schema_version": "1.0", "event_type": "approval", "idempotency_key": "nameless-2", "release_id": 7}'::jsonb) AS r;
RESET ROLE;
RESET request.jwt.claims;
SELECT is((SELECT (r ->> 'status') || ' ' || (r #>> '{detail,http_status}') || ' ' || (r::text LIKE '%release_id%')::text FROM nameless_bad),
          'rejected 403 false', 'an anonymous sender''s malformed envelope is refused (403) without the parse''s findings');

-- R4: a check result re-evaluates the gates it can change, and only those: G3 follows G2.
SELECT ops.ingest_event(pg_temp.ev('r4', 'release_created', '{"version": "4"}', 'a0000000-0000-4000-8000-000000000004')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r4-build', 'build_complete', '{"status": "pass"}', 'a0000000-0000-4000-8000-000000000004')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r4-qa', 'gate_signoff', '{}', 'a0000000-0000-4000-8000-000000000004')) \g /dev/null
SET LOCAL request.jwt.claims = '{"sub": "rm-rita", "role": "release_manager"}';
SELECT is(ops.ingest_event(pg_temp.ev('r4-rm', 'approval',
              '{"decision": "approved", "evidence": [{"artifact_type": "rollback_plan", "uri": "https://wiki.example/r4/rollback"}]}',
              'a0000000-0000-4000-8000-000000000004')) #>> '{detail,gates,G3}', 'passed', 'setup: R4''s G3 passed (G2 passed too)');
RESET request.jwt.claims;
SELECT is((SELECT string_agg(submitted_by, ',') FROM ops.evidence_artifacts
            WHERE release_id = 'a0000000-0000-4000-8000-000000000004' AND uri = 'https://wiki.example/r4/rollback'),
          'release_manager (approval)', 'an approval''s evidence names the persona that approved, not who (every persona reads evidence)');
SELECT is(ops.ingest_event(pg_temp.ev('r4-e2e', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "fail"}',
              'a0000000-0000-4000-8000-000000000004')) -> 'detail' -> 'gates',
          jsonb_build_object('G1', 'passed', 'G2', 'failed', 'G3', ops.evaluate_gate((SELECT gate_id FROM ops.release_gates
              WHERE release_id = 'a0000000-0000-4000-8000-000000000004' AND gate_code = 'G3')), 'G4', 'pending'),
          'a failing G2 check answers with every gate: G2 failed, G3 re-evaluated, G1 and G4 as stored');
SELECT is((SELECT string_agg(gate_code || '=' || status, ',' ORDER BY gate_code) FROM ops.release_gates
            WHERE release_id = 'a0000000-0000-4000-8000-000000000004'), 'G1=passed,G2=failed,G3=in_progress,G4=pending',
          'G3 no longer passes once G2 fails, and the stored statuses say so');
SELECT is((SELECT count(*) FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000004'
              AND status <> ops.evaluate_gate(gate_id)), 0::bigint, 'each equals a fresh evaluation');
-- A rejection fails G3; its reason names the persona, not who rejected (every persona reads the
-- gate statuses; fewer see ops.approvals).
SET LOCAL request.jwt.claims = '{"sub": "rm-rita", "role": "release_manager"}';
SELECT is(ops.ingest_event(pg_temp.ev('r4-rm-no', 'approval', '{"decision": "rejected"}',
              'a0000000-0000-4000-8000-000000000004')) #>> '{detail,gates,G3}', 'failed', 'a release_manager rejection fails G3');
RESET request.jwt.claims;
SELECT is((SELECT status_reason FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000004' AND gate_code = 'G3'),
          'release approval rejected (release_manager)', 'and the stored reason does not name the approver');
SELECT ok(NOT EXISTS (SELECT FROM ops.evidence_artifacts a JOIN ops.approvals p ON p.release_id = a.release_id
                      WHERE a.artifact_type = 'qa_signoff'
                        AND (strpos(a.description, p.approver_id) > 0 OR a.submitted_by = p.approver_id))
          AND EXISTS (SELECT FROM ops.evidence_artifacts WHERE artifact_type = 'qa_signoff'),
          'nor does a signoff''s evidence row, which every persona reads (description or submitter)');
SELECT is((SELECT string_agg(DISTINCT submitted_by, ', ') FROM ops.evidence_artifacts a
            WHERE artifact_type = 'qa_signoff' AND EXISTS (SELECT FROM ops.approvals p WHERE p.ingest_id = a.ingest_id)),
          'qa_tester (gate_signoff)', 'a signoff''s evidence is submitted by the signing persona');

-- R3: everything but G3's approval; G3 bypassed by an approved exception.
SELECT ops.ingest_event(pg_temp.ev('r3', 'release_created', '{"version": "3"}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r3-build', 'build_complete', '{"status": "pass"}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r3-qa', 'gate_signoff', '{}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r3-dep', 'deployment_started', '{"environment": "staging", "deployment_id": "d0000000-0000-4000-8000-000000000003"}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r3-fin', 'deployment_finished', '{"deployment_id": "d0000000-0000-4000-8000-000000000003", "status": "succeeded"}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT ops.ingest_event(pg_temp.ev('r3-health', 'health_check', '{"deployment_id": "d0000000-0000-4000-8000-000000000003", "status": "pass", "uri": "https://grafana/r3"}', 'a0000000-0000-4000-8000-000000000003')) \g /dev/null
SELECT is(ops.promotion_status('a0000000-0000-4000-8000-000000000003', 'production') -> 'blocking',
          '["G3 pending: waiting for a release_manager approval, a rollback_plan artifact"]'::jsonb,
          'without G3 production is blocked, and the reason says what is missing');
SET LOCAL request.jwt.claims = '{"sub": "dev-dana", "role": "developer"}';
CREATE TEMP TABLE exc AS SELECT ops.ingest_event(pg_temp.ev('r3-exc', 'exception_requested',
    jsonb_build_object('gate_code', 'G3', 'reason', 'CVE hotfix, approver on leave', 'expires_at', now() + interval '2 hours'),
    'a0000000-0000-4000-8000-000000000003')) AS r;
RESET request.jwt.claims;
SELECT is((SELECT r #>> '{detail,exception_status}' FROM exc), 'requested', 'an exception is requested');
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000003', 'production'), 'a requested exception bypasses nothing');
SET LOCAL request.jwt.claims = '{"sub": "dev-dana", "role": "developer"}';
SELECT is(ops.ingest_event(pg_temp.ev('r3-self', 'exception_decided',
              jsonb_build_object('exception_id', (SELECT r #>> '{detail,exception_id}' FROM exc), 'decision', 'approved'),
              'a0000000-0000-4000-8000-000000000003')) #>> '{detail,error}', 'forbidden',
          'the requester cannot decide their own exception (four eyes)');
SET LOCAL request.jwt.claims = '{"sub": "rm-rita", "role": "release_manager"}';
SELECT is(ops.ingest_event(pg_temp.ev('r3-approve', 'exception_decided',
              jsonb_build_object('exception_id', (SELECT r #>> '{detail,exception_id}' FROM exc), 'decision', 'approved'),
              'a0000000-0000-4000-8000-000000000003')) ->> 'status', 'accepted', 'another release manager approves it');
RESET request.jwt.claims;
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000003' AND gate_code = 'G3'), 'bypassed',
          'G3 is bypassed');
SELECT ok(ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000003', 'production'),
          'G3 bypassed through an active exception: eligible for production');
SELECT is((SELECT effective_status FROM ops.v_exception_status WHERE release_id = 'a0000000-0000-4000-8000-000000000003'), 'active',
          'v_exception_status shows it active');
-- Its owner brings the exception's expiry forward: the stored bypass ends then too (eligibility
-- read from the stored statuses trusts that expiry).
UPDATE ops.exceptions SET expires_at = now() + interval '1 minute' WHERE release_id = 'a0000000-0000-4000-8000-000000000003';
SELECT ok((SELECT g.status = 'bypassed' AND abs(extract(epoch FROM g.bypass_expires_at - x.expires_at)) < 0.001
             FROM ops.release_gates g JOIN ops.exceptions x ON x.exception_id = g.bypass_exception_id
            WHERE g.release_id = 'a0000000-0000-4000-8000-000000000003' AND g.gate_code = 'G3'),
          'an exception whose expiry is moved moves the stored bypass''s expiry with it');
-- The exception expires while this transaction runs: after it began (now()), before this
-- statement (clock_timestamp()).
SELECT pg_sleep(0.05) \g /dev/null
ALTER TABLE ops.exceptions DISABLE TRIGGER refresh_gates_update;
UPDATE ops.exceptions SET expires_at = clock_timestamp() WHERE release_id = 'a0000000-0000-4000-8000-000000000003';
UPDATE ops.release_gates g SET bypass_expires_at = x.expires_at FROM ops.exceptions x
 WHERE x.gate_id = g.gate_id AND g.release_id = 'a0000000-0000-4000-8000-000000000003';
ALTER TABLE ops.exceptions ENABLE TRIGGER refresh_gates_update;
SELECT ok((SELECT expires_at > now() AND expires_at < clock_timestamp() FROM ops.exceptions WHERE release_id = 'a0000000-0000-4000-8000-000000000003'),
          'setup: the exception expired after this transaction began');
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000003', 'production'),
          'an exception that expired while the transaction ran bypasses nothing (the clock decides, not the transaction''s start)');
SELECT throws_ok($$INSERT INTO ops.deployments (release_id, environment, deployed_by) VALUES ('a0000000-0000-4000-8000-000000000003', 'production', 'ci')$$,
                 '55000', NULL, 'and the promotion block refuses production');
SELECT is((SELECT effective_status FROM ops.v_exception_status WHERE release_id = 'a0000000-0000-4000-8000-000000000003'), 'expired',
          'v_exception_status says so too');
-- Time passes and the exception expires, with no write to trigger a re-evaluation.
SELECT pg_temp.expire_bypass('a0000000-0000-4000-8000-000000000003', 'G3') \g /dev/null
SELECT ok(NOT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000003', 'production'),
          'an expired exception no longer bypasses (decided at evaluation time)');
SELECT is((SELECT eligible FROM ops.v_promotion_eligibility WHERE release_id = 'a0000000-0000-4000-8000-000000000003' AND environment = 'production'),
          false, 'v_promotion_eligibility sees the expiry too (it evaluates a release with an expired bypass afresh)');
-- ... by the clock, not by its statement's start: read in the one statement (a DO block) during
-- which the bypass expired.
CREATE TEMP TABLE view_late (eligible boolean);
DO $$
BEGIN
    ALTER TABLE ops.exceptions DISABLE TRIGGER refresh_gates_update;
    UPDATE ops.exceptions SET expires_at = clock_timestamp() + interval '200 milliseconds'
     WHERE release_id = 'a0000000-0000-4000-8000-000000000003';
    UPDATE ops.release_gates g SET bypass_expires_at = x.expires_at FROM ops.exceptions x
     WHERE x.gate_id = g.gate_id AND g.release_id = 'a0000000-0000-4000-8000-000000000003';
    ALTER TABLE ops.exceptions ENABLE TRIGGER refresh_gates_update;
    PERFORM pg_sleep(0.3);
    INSERT INTO view_late SELECT eligible FROM ops.v_promotion_eligibility
     WHERE release_id = 'a0000000-0000-4000-8000-000000000003' AND environment = 'production';
END $$;
SELECT is((SELECT eligible FROM view_late), false,
          'v_promotion_eligibility judges expiry by the clock: a bypass that expired during its statement bypasses nothing');
SELECT is(ops.promotion_status('a0000000-0000-4000-8000-000000000003', 'production') -> 'blocking',
          '["G3 pending: waiting for a release_manager approval, a rollback_plan artifact"]'::jsonb,
          'and promotion_status gives the reason the fresh evaluation gives');
SELECT is((SELECT effective_status FROM ops.v_exception_status WHERE release_id = 'a0000000-0000-4000-8000-000000000003'), 'expired',
          'v_exception_status shows it expired');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000003' AND gate_code = 'G3'), 'bypassed',
          'the stored status still says bypassed until something re-evaluates it');
SELECT is(ops.expire_bypasses(), 1, 'the expiry sweep re-evaluates the release');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000003' AND gate_code = 'G3'), 'pending',
          'and the stored status is current again');

-- ---- A repeated check result -------------------------------------------------------------------
-- A result that repeats its check's latest one (same status, same required) changes no
-- evaluation, so the ingest neither writes a check row for it (its log row is the report) nor
-- evaluates the release again: a mark put on the stored reason stays. Under READ COMMITTED it
-- takes no turn on the release either (a transaction that reads one snapshot throughout does:
-- pg_test/concurrency/ops_isolation.sh). Any other result, or a repeat while a bypass of a gate
-- the check's evaluation reads has expired, is evaluated.
CREATE FUNCTION pg_temp.chk(key text, body text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT ops.ingest_event(pg_temp.ev(key, 'check_result', body::jsonb, 'a0000000-0000-4000-8000-000000000009'))
$$;
CREATE FUNCTION pg_temp.r9_ctid() RETURNS tid LANGUAGE sql AS $$
    SELECT ctid FROM ops.release_locks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'
$$;
CREATE FUNCTION pg_temp.r9_g1() RETURNS text LANGUAGE sql AS $$
    SELECT status || ': ' || status_reason FROM ops.release_gates
     WHERE release_id = 'a0000000-0000-4000-8000-000000000009' AND gate_code = 'G1'
$$;
SELECT ops.ingest_event(pg_temp.ev('r9', 'release_created', '{"version": "9"}', 'a0000000-0000-4000-8000-000000000009')) \g /dev/null
SELECT pg_temp.chk('r9-unit-1', '{"gate_code": "G1", "check_name": "unit", "status": "fail"}') \g /dev/null
SELECT pg_temp.chk('r9-lint-1', '{"gate_code": "G1", "check_name": "lint", "status": "fail"}') \g /dev/null
SELECT is(pg_temp.r9_g1(), 'failed: required check(s) failed: lint, unit',
          'failed checks are named in name order, not in the order they were reported');
SELECT is(pg_temp.r9_g1(),
          (SELECT e ->> 'status' || ': ' || (e ->> 'reason') FROM jsonb_array_elements(ops.refresh_gates('a0000000-0000-4000-8000-000000000009')) e
            WHERE e ->> 'code' = 'G1'),
          'which is what a fresh evaluation gives');
UPDATE ops.release_gates SET status_reason = status_reason || ' [mark]'
 WHERE release_id = 'a0000000-0000-4000-8000-000000000009' AND gate_code = 'G1';
CREATE TEMP TABLE r9_before AS SELECT pg_temp.r9_ctid() AS row_at, (SELECT count(*) FROM ops.gate_checks
  WHERE release_id = 'a0000000-0000-4000-8000-000000000009') AS checks;
CREATE TEMP TABLE r9_repeat AS SELECT pg_temp.chk('r9-unit-2', '{"gate_code": "G1", "check_name": "unit", "status": "fail"}') AS r;
SELECT is((SELECT r #>> '{detail,gates,G1}' FROM r9_repeat), 'failed', 'a repeated result is accepted with the gate statuses');
SELECT is((SELECT r #>> '{detail,check_id}' FROM r9_repeat),
          (SELECT check_id::text FROM ops.gate_checks WHERE release_id = 'a0000000-0000-4000-8000-000000000009' AND check_name = 'unit'),
          'its check_id is the row that holds the result (the first report of it)');
SELECT is((SELECT r #>> '{detail,repeated}' FROM r9_repeat), 'true', 'and the answer says the report repeated it');
SELECT is((SELECT count(*) FROM ops.gate_checks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          (SELECT checks FROM r9_before), 'no check row is written for it');
SELECT is((SELECT envelope ->> 'check_name' FROM ops.event_ingest_log WHERE idempotency_key = 'r9-unit-2' AND processing_status = 'accepted'),
          'unit', 'the report itself is its accepted log row');
SELECT is(pg_temp.r9_g1(), 'failed: required check(s) failed: lint, unit [mark]', 'the release was not evaluated again (the mark stays)');
SELECT is(pg_temp.r9_ctid(), (SELECT row_at FROM r9_before),
          'and it took no turn on the release (read committed: its lock row is as it was; it changed no fact)');
SELECT is(pg_temp.chk('r9-unit-2b', '{"gate_code": "G1", "check_name": "unit", "status": "fail", "run_id": "run-77",
                                      "details_url": "https://ci.example/run-77"}') #>> '{detail,repeated}',
          'true', 'a repeat from another run is a repeat too');
SELECT is((SELECT count(*) FROM ops.gate_checks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          (SELECT checks FROM r9_before), '  and writes no row either; its run is in its log row')
  FROM ops.event_ingest_log WHERE idempotency_key = 'r9-unit-2b' AND envelope ->> 'run_id' = 'run-77';
-- Every persona reads every report's run in ops.v_check_reports, a developer too, who reads no
-- row of CI's in the ingest log.
SELECT r #>> '{detail,check_id}' AS r9_check FROM r9_repeat \gset
-- A condition cheaper than the view's own, which fails on a row the view does not show (the
-- release's release_created).
SELECT ingest_id AS r9_hidden FROM ops.event_ingest_log
 WHERE release_id = 'a0000000-0000-4000-8000-000000000009' AND processing_status = 'accepted' AND event_type = 'release_created' \gset
SELECT format($f$CREATE FUNCTION pg_temp.seen(id uuid) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS $b$
                 BEGIN IF id = %L THEN RAISE EXCEPTION 'a row the view does not show'; END IF; RETURN true; END $b$$f$,
              :'r9_hidden') \gexec
SET LOCAL ROLE developer;
SET LOCAL request.jwt.claims = '{"sub": "dev-dana", "role": "developer"}';
SELECT is((SELECT run_id || ' ' || details_url || ' ' || repeated || ' ' || (check_id::text = :'r9_check')
             FROM ops.v_check_reports
            WHERE release_id = 'a0000000-0000-4000-8000-000000000009' AND check_name = 'unit' AND run_id = 'run-77'),
          'run-77 https://ci.example/run-77 true true', 'a developer reads the repeat''s run and the row that holds its result in ops.v_check_reports');
SELECT throws_ok($$SELECT count(*) FROM ops.event_ingest_log$$, '42501', NULL, '  who cannot read the ingest log itself');
SELECT lives_ok($$SELECT count(*) FROM ops.v_check_reports WHERE pg_temp.seen(ingest_id)$$,
                '  nor through the view: a reader''s own condition, however cheap, sees only the rows it shows (a security barrier)');
RESET ROLE;
RESET request.jwt.claims;
CREATE TEMP TABLE r9_evidence AS SELECT ops.ingest_event(pg_temp.ev('r9-unit-2c', 'check_result',
    '{"gate_code": "G1", "check_name": "unit", "status": "fail",
      "evidence": [{"artifact_type": "test_report", "uri": "https://ci.example/run-78/report"}]}',
    'a0000000-0000-4000-8000-000000000009')) AS r;
SELECT is((SELECT count(*) FROM ops.evidence_artifacts a JOIN ops.gate_checks c ON c.check_id = a.check_id
            WHERE c.check_id::text = (SELECT r #>> '{detail,check_id}' FROM r9_evidence) AND c.ingest_id::text = (SELECT r ->> 'ingest_id' FROM r9_evidence)),
          1::bigint, 'a repeat with evidence writes its own check row, which the evidence is attached to');
SELECT pg_temp.chk('r9-unit-3', '{"gate_code": "G1", "check_name": "unit", "status": "pass"}') \g /dev/null
SELECT is(pg_temp.r9_g1(), 'failed: required check(s) failed: lint', 'a new status is evaluated and stored');
SELECT is(pg_temp.chk('r9-lint-2', '{"gate_code": "G1", "check_name": "lint", "status": "fail", "required": false}') #>> '{detail,gates,G1}',
          'passed', 'the same status with another required flag is evaluated: lint no longer blocks G1');
SELECT is(pg_temp.r9_g1(), 'passed: every required check passed', 'and stored');
-- A bypass of G1 that has expired: a repeat evaluates, and the stored status is current again.
SELECT pg_temp.chk('r9-unit-4', '{"gate_code": "G1", "check_name": "unit", "status": "fail"}') \g /dev/null
SET LOCAL request.jwt.claims = '{"sub": "dev-dana", "role": "developer"}';
CREATE TEMP TABLE r9_exc AS SELECT ops.ingest_event(pg_temp.ev('r9-exc', 'exception_requested',
    jsonb_build_object('gate_code', 'G1', 'reason', 'flaky runner', 'expires_at', now() + interval '2 hours'),
    'a0000000-0000-4000-8000-000000000009')) AS r;
SET LOCAL request.jwt.claims = '{"sub": "rm-rita", "role": "release_manager"}';
SELECT ops.ingest_event(pg_temp.ev('r9-exc-ok', 'exception_decided',
    jsonb_build_object('exception_id', (SELECT r #>> '{detail,exception_id}' FROM r9_exc), 'decision', 'approved'),
    'a0000000-0000-4000-8000-000000000009')) \g /dev/null
RESET request.jwt.claims;
SELECT is(split_part(pg_temp.r9_g1(), ':', 1), 'bypassed', 'setup: G1 is bypassed');
SELECT is(pg_temp.chk('r9-unit-5', '{"gate_code": "G1", "check_name": "unit", "status": "fail"}') #>> '{detail,gates,G1}',
          'bypassed', 'a repeat while the bypass is active answers bypassed');
SELECT pg_temp.expire_bypass('a0000000-0000-4000-8000-000000000009', 'G1') \g /dev/null
SELECT is(pg_temp.chk('r9-unit-6', '{"gate_code": "G1", "check_name": "unit", "status": "fail"}') #>> '{detail,gates,G1}',
          'failed', 'a repeat after the bypass expired is evaluated: G1 is failed');
SELECT is(pg_temp.r9_g1(), 'failed: required check(s) failed: unit', 'and stored so');
SELECT is((SELECT count(*) FROM ops.gate_checks c JOIN ops.event_ingest_log l ON l.ingest_id = c.ingest_id
            WHERE l.idempotency_key IN ('r9-unit-5', 'r9-unit-6')), 0::bigint,
          'neither repeat wrote a check row (the evaluation reads the row that holds the result)');
-- G3 follows G2: after G2's bypass expired, a repeated G3 check is evaluated too.
CREATE FUNCTION pg_temp.r10(key text, type text, body jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT ops.ingest_event(pg_temp.ev(key, type, body, 'a0000000-0000-4000-8000-000000000010'))
$$;
CREATE FUNCTION pg_temp.r10_gate(code text) RETURNS text LANGUAGE sql AS $$
    SELECT status || ': ' || status_reason FROM ops.release_gates
     WHERE release_id = 'a0000000-0000-4000-8000-000000000010' AND gate_code = code
$$;
SELECT pg_temp.r10('r10', 'release_created', '{"version": "10"}') \g /dev/null
SELECT pg_temp.r10('r10-e2e', 'check_result', '{"gate_code": "G2", "check_name": "e2e", "status": "fail"}') \g /dev/null
SET LOCAL request.jwt.claims = '{"sub": "dev-dana", "role": "developer"}';
CREATE TEMP TABLE r10_exc AS SELECT pg_temp.r10('r10-exc', 'exception_requested',
    jsonb_build_object('gate_code', 'G2', 'reason', 'known flake', 'expires_at', now() + interval '2 hours')) AS r;
SET LOCAL request.jwt.claims = '{"sub": "rm-rita", "role": "release_manager"}';
SELECT pg_temp.r10('r10-exc-ok', 'exception_decided',
    jsonb_build_object('exception_id', (SELECT r #>> '{detail,exception_id}' FROM r10_exc), 'decision', 'approved')) \g /dev/null
RESET request.jwt.claims;
SELECT pg_temp.r10('r10-smoke-1', 'check_result', '{"gate_code": "G3", "check_name": "smoke", "status": "pass"}') \g /dev/null
SELECT is(split_part(pg_temp.r10_gate('G2'), ':', 1) || ' / ' || pg_temp.r10_gate('G3'),
          'bypassed / in_progress: waiting for a release_manager approval, a rollback_plan artifact',
          'setup: G2 bypassed, so G3 waits only for its own approval and rollback plan');
SELECT pg_temp.expire_bypass('a0000000-0000-4000-8000-000000000010', 'G2') \g /dev/null
SELECT pg_temp.r10('r10-smoke-2', 'check_result', '{"gate_code": "G3", "check_name": "smoke", "status": "pass"}') \g /dev/null
SELECT is(pg_temp.r10_gate('G3'),
          'in_progress: waiting for a release_manager approval, a rollback_plan artifact, G2 passed (it is failed)',
          'a repeated G3 result after G2''s bypass expired is evaluated: G3 now waits for G2');
SELECT is(split_part(pg_temp.r10_gate('G2'), ':', 1), 'bypassed', 'G2 itself, which a G3 result cannot change, stays stored as it was');
SELECT is(ops.expire_bypasses(), 1, 'until the expiry sweep re-evaluates the release');

-- ---- Stored statuses stay exact -----------------------------------------------------------------
-- Eligibility reads ops.release_gates, so every write path must leave it equal to a fresh
-- evaluation: ingest (which evaluates each release once per envelope), direct writes, deletes,
-- and a change of a gate's required checks.
SELECT is((SELECT count(*) FROM ops.release_gates WHERE status <> ops.evaluate_gate(gate_id)), 0::bigint,
          'after every event above, each stored gate status equals a fresh evaluation');
SELECT is((SELECT count(*) FROM ops.v_promotion_eligibility v
            WHERE v.eligible IS DISTINCT FROM ops.is_eligible_for_promotion(v.release_id, v.environment)
               OR v.blocking IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(ops.promotion_status(v.release_id, v.environment) -> 'blocking'))),
          0::bigint, 'v_promotion_eligibility agrees with ops.is_eligible_for_promotion and ops.promotion_status for every release');
SELECT ok(NOT ops.ingest_applying('a0000000-0000-4000-8000-000000000002'), 'outside an ingest no release is being applied');
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G2'), 'failed',
          'setup: R2''s G2 is failed by its e2e check');
DELETE FROM ops.gate_checks WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND check_name = 'e2e';
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G2'), 'passed',
          'deleting the failing check (the owner) re-evaluates G2 at once');
SELECT ok(ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000002', 'staging'), 'and R2 is eligible for staging again');
UPDATE ops.release_gates SET required_checks = '{build,unit,lint}'
 WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G1';
SELECT is((SELECT status FROM ops.release_gates WHERE release_id = 'a0000000-0000-4000-8000-000000000002' AND gate_code = 'G1'), 'in_progress',
          'a direct change of G1''s required checks re-evaluates it (lint has not reported)');
SELECT is((SELECT count(*) FROM ops.release_gates WHERE status <> ops.evaluate_gate(gate_id)), 0::bigint,
          'and every stored status still equals a fresh evaluation');

-- ---- The release lock -----------------------------------------------------------------------------
-- Its rows hold nothing: a crash empties the UNLOGGED table (as TRUNCATE does here) and the next
-- event takes its release's row again; a deleted release's row goes with it.
SELECT ok(EXISTS (SELECT FROM ops.release_locks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          'an event applied to a release left its lock row');
TRUNCATE ops.release_locks;
SELECT is((SELECT pg_temp.chk('r9-after-crash', '{"gate_code": "G1", "check_name": "unit", "status": "pass"}') ->> 'status'), 'accepted',
          'after the lock rows are gone (a crash) an event is applied');
SELECT ok(EXISTS (SELECT FROM ops.release_locks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          'and takes its release''s row again');
DELETE FROM ops.releases WHERE release_id = 'a0000000-0000-4000-8000-000000000009';
SELECT ok(NOT EXISTS (SELECT FROM ops.release_locks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          'a deleted release''s lock row goes with it');
SELECT is((SELECT pg_temp.chk('r9-deleted', '{"gate_code": "G1", "check_name": "unit", "status": "pass"}') #>> '{detail,error}'),
          'unknown_release', 'an event for it is rejected as for an unknown release (409)');
SELECT ok(NOT EXISTS (SELECT FROM ops.release_locks WHERE release_id = 'a0000000-0000-4000-8000-000000000009'),
          'and takes no lock row');

-- ---- Records stay records -----------------------------------------------------------------------
SELECT throws_ok($$UPDATE ops.environment_events SET event_kind = 'nothing_happened'$$, '55000', NULL, 'environment_events is append-only (UPDATE)');
SELECT throws_ok($$DELETE FROM ops.environment_events$$, '55000', NULL, 'environment_events is append-only (DELETE)');
SELECT throws_ok($$SELECT ops.evaluate_gate('00000000-0000-4000-8000-000000000000')$$, 'P0002', NULL, 'evaluate_gate of an unknown gate is P0002');
SELECT throws_ok($$SELECT ops.is_eligible_for_promotion('a0000000-0000-4000-8000-000000000003', 'moon')$$, '22023', NULL,
                 'an unknown target environment is 22023');
SELECT throws_ok($$SELECT ops.is_eligible_for_promotion('00000000-0000-4000-8000-000000000000', 'staging')$$, 'P0002', NULL,
                 'an unknown release is P0002');

-- A TRUNCATE (owner only) re-evaluates every release: no G1 stays passed without its checks.
SELECT ok((SELECT count(*) FROM ops.release_gates WHERE gate_code = 'G1' AND status = 'passed') > 0,
          'before: some G1 gates passed on their checks');
TRUNCATE ops.gate_checks CASCADE;
SELECT is((SELECT count(*) FROM ops.release_gates WHERE gate_code = 'G1' AND status = 'passed'), 0::bigint,
          'after TRUNCATE ops.gate_checks: no G1 is still passed');
SELECT is((SELECT count(*) FROM ops.release_gates WHERE status <> ops.evaluate_gate(gate_id)), 0::bigint,
          'and every stored status equals a fresh evaluation');

SELECT * FROM finish();
ROLLBACK;

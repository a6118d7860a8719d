-- The intake drain against flowgate-testd on 127.0.0.1:5597: validation
-- webhook → ledger through the outbox, 4xx releases the resource, a webhook that is down goes
-- to the DLQ after max_retries reads and replays once it is back, a ledger that refuses
-- connections is retried without re-validating; the ledger itself (idempotency, bad payloads,
-- RLS), the external-worker API and metrics.
--
-- The drain only reads intents and enqueues their requests; CALL flowgate.run_outbox() sends
-- them with no transaction open and the intake response handlers move each intent on (a
-- validated intent's ledger commit goes out in the same CALL's next round). A CALL cannot run
-- inside a transaction block, so this file runs in autocommit: its pools are 'external' (the
-- background worker does not drain them, though it may send what they enqueue), every check
-- after a CALL reads the rows once the pools' deliveries have settled, checks that must leave
-- nothing behind run in BEGIN … ROLLBACK blocks, and the end removes what the file created.
SELECT plan(102);

CREATE FUNCTION pg_temp.pools() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['tap_local', 'tap_reject', 'tap_busy', 'tap_down', 'tap_ledger', 'tap_refused', 'tap_ext', 'tap_batch', 'tap_lag', 'tap_strict', 'tap_gone', 'tap_hfail', 'tap_oldmq'] $$;
-- Until none of this file's deliveries is in flight or due (the worker may be sending them).
CREATE FUNCTION pg_temp.settle() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        IF NOT EXISTS (SELECT FROM flowgate.deliveries
                        WHERE owner_module = 'intake' AND split_part(owner_id, ':', 1) = ANY (pg_temp.pools())
                          AND (status = 'in_flight' OR (status = 'pending' AND next_attempt_at <= clock_timestamp()))) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE WARNING 'intake deliveries still in flight or due after 5 s';
    RETURN false;
END $$;
-- The file's pools (with their queues, inventory and metrics), ledger rows and deliveries.
CREATE FUNCTION pg_temp.cleanup() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    p text;
BEGIN
    FOR p IN SELECT pool_id FROM intake.engine_config WHERE pool_id = ANY (pg_temp.pools()) LOOP
        PERFORM intake.drop_pool(p);
    END LOOP;
    DELETE FROM intake.transactions WHERE pool_id = ANY (pg_temp.pools());
    DELETE FROM flowgate.deliveries WHERE owner_module = 'intake' AND split_part(owner_id, ':', 1) = ANY (pg_temp.pools());
END $$;
SELECT pg_temp.cleanup() \g /dev/null

-- ---- Happy path, ledger in this database (commit_target NULL) ---------------------------------
SELECT intake.create_pool('tap_local', 5, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "visibility_timeout_seconds": 1, "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_local', u) FROM (VALUES ('u1'), ('u2'), ('u3')) v(u) \g /dev/null
BEGIN;  -- (until it commits, the background worker cannot send what the drain enqueued)
CREATE TEMP TABLE dl AS SELECT intake.drain('tap_local') AS r;
SELECT is((SELECT r ->> 'read' FROM dl), '3', 'the drain reads the three intents');
SELECT is((SELECT (r ->> 'handed_to_outbox') || ' ' || (r ->> 'status') FROM dl), '3 sending',
          'and hands their three validation requests to the outbox, and says so');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id LIKE 'tap_local:%' AND status = 'pending' AND attempts = 0), 3,
          'nothing is sent inside the drain: the requests wait in the outbox');
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_local'), 3, 'the outbox sends them and the handlers put all three in the ledger');
SELECT is((SELECT count(*)::int FROM intake.allocations WHERE pool_id = 'tap_local' AND status = 'consumed'), 3, 'their resources are consumed');
SELECT is((SELECT count(*)::int FROM pgmq.q_intake_tap_local), 0, 'the queue is empty');
SELECT is((SELECT count(*)::int FROM pgmq.a_intake_tap_local WHERE message ->> 'state' = 'committed'), 3,
          'committed intents are archived (the logged record recover_pool reads)');
SELECT ok((SELECT bool_and((body ->> 'idempotency_key') = split_part(owner_id, ':', 2) AND idempotency_key = 'intake:tap_local:validate:' || split_part(owner_id, ':', 2)
                      AND wire_key IS NULL)
             FROM flowgate.deliveries WHERE owner_id LIKE 'tap_local:%'),
          'the validation POST carries idempotency_key = msg_id, and the same Idempotency-Key header on every attempt');
SELECT is((SELECT validation ->> 'ok' FROM intake.transactions WHERE pool_id = 'tap_local' AND user_id = 'u1'), 'true',
          'the webhook''s answer travels to the ledger row');
SELECT is(intake.drain('tap_local') ->> 'status', 'empty', 'a second drain finds nothing, and says so');

-- ---- The ledger: idempotent, checked, private (nothing here is kept) ---------------------------
BEGIN;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA flowgate, intake TO authenticated;
SELECT is(intake.finalize_transaction(jsonb_build_object('idempotency_key', idempotency_key, 'pool_id', pool_id,
              'resource_id', resource_id, 'user_id', user_id)) ->> 'status', 'duplicate', 'a repeated key returns the first row')
  FROM intake.transactions WHERE pool_id = 'tap_local' AND user_id = 'u1';
SELECT throws_ok(format($$SELECT intake.finalize_transaction('{"idempotency_key": %s, "pool_id": "tap_local", "resource_id": "%s", "user_id": "mallory"}')$$,
                        to_json(idempotency_key), resource_id), '23505', NULL, 'the same key for another user is 23505')
  FROM intake.transactions WHERE pool_id = 'tap_local' AND user_id = 'u1';
SELECT throws_ok(format($$SELECT intake.finalize_transaction('{"idempotency_key": "other", "pool_id": "tap_local", "resource_id": "%s", "user_id": "u1"}')$$,
                        resource_id), '23505', NULL, 'a resource already in the ledger under another key is 23505')
  FROM intake.transactions WHERE pool_id = 'tap_local' AND user_id = 'u1';
SELECT throws_ok($$SELECT intake.finalize_transaction('[]')$$, '22023', NULL, 'a payload must be an object');
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": "k1", "pool_id": "tap_local", "resource_id": "nope", "user_id": "u9"}')$$,
                 '22023', NULL, 'resource_id must be a UUID');
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": "k1", "pool_id": "x''; drop table t; --", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90", "user_id": "u9"}')$$,
                 '22023', NULL, 'pool_id must be a pool identifier');
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": true, "pool_id": "tap_local", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90", "user_id": "u9"}')$$,
                 '22023', NULL, 'idempotency_key must be text or an integer');
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": "k1", "pool_id": "tap_local", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90", "user_id": "u9", "admin": true}')$$,
                 '22023', NULL, 'unknown fields are refused (extra data goes in details)');
SELECT throws_ok(format($$SELECT intake.finalize_transaction('{"idempotency_key": "k1", "pool_id": "tap_local", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e90", "user_id": "u9", "details": {"blob": "%s"}}')$$,
                        repeat('x', 70000)), '22023', NULL, 'payloads over 64 KiB are refused');
-- Every refused payload above is for tap_local, or for user u9 or mallory: only u1–u3's rows exist.
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_local' OR user_id IN ('u9', 'mallory')), 3,
          'refused payloads wrote nothing');
SELECT is(intake.finalize_transaction('{"idempotency_key": 7001, "pool_id": "tap_other", "resource_id": "0B9E4C1A-6F0E-4D8E-9B43-2F1C3A5D7E90", "user_id": "u9", "details": {"seat": "A1"}}') ->> 'status',
          'finalized', 'an external ledger call (numeric key, upper-case UUID, details) is finalized');

SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = '{"sub": "u1", "role": "authenticated"}';
SELECT is((SELECT array_agg(user_id) FROM intake.transactions WHERE pool_id IN ('tap_local', 'tap_other')), ARRAY['u1'],
          'under RLS a user sees only their own ledger rows');
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": "k2", "pool_id": "tap_local", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e91", "user_id": "u1"}')$$,
                 '42501', NULL, 'users cannot write the ledger');
-- Not even once granted the module's API (grant_api grants intake.claim with it): a ledger row
-- names its user, so only trusted backends write one.
RESET ROLE;
SELECT count(*) FROM flowgate.grant_api('authenticated', ARRAY['intake']) \g /dev/null
SET LOCAL ROLE authenticated;
SELECT throws_ok($$SELECT intake.finalize_transaction('{"idempotency_key": "forged", "pool_id": "tap_any", "resource_id": "0b9e4c1a-6f0e-4d8e-9b43-2f1c3a5d7e92", "user_id": "victim"}')$$,
                 '42501', NULL, 'users granted the intake API still cannot write the ledger (trusted backends only)');
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE idempotency_key = 'forged'), 0, 'and nothing was written');
SELECT throws_ok($$SELECT intake.drain('tap_local')$$, '42501', NULL, 'users cannot drain');
SELECT throws_ok($$SELECT intake.replay_dlq('tap_local')$$, '42501', NULL, 'users cannot replay the DLQ');
SELECT throws_ok($$SELECT intake.pool_status('tap_local')$$, '42501', NULL, 'nor read a pool''s status (owner only)');
SELECT throws_ok($$SELECT intake.claim_resource('tap_local', 'someone-else')$$, '42501', NULL, 'users cannot claim in another user''s name');
-- Claims through intake.claim go to a pool of this block: a claim rolled back with it would
-- still have used up a slot and a message id of its pool (the metrics below count those).
RESET ROLE;
SELECT intake.create_pool('tap_jwt', 5) \g /dev/null
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = '{"sub": "u4", "role": "authenticated"}';
SELECT is(intake.claim('tap_jwt') ->> 'status', 'claimed', 'a signed-in user claims for themself through intake.claim');
SET LOCAL request.jwt.claims = '{"role": "authenticated"}';
SELECT throws_ok($$SELECT intake.claim('tap_jwt')$$, '42501', NULL, 'a request without a JWT subject cannot claim');
RESET ROLE;
RESET request.jwt.claims;
SELECT is((SELECT array_agg(message ->> 'user_id') FROM pgmq.q_intake_tap_jwt), ARRAY['u4'], 'the claim is in the JWT subject''s name, and only that one was made');
ROLLBACK;
-- One more intent for the metrics at the end: it stays queued in tap_local.
SELECT intake.claim_resource('tap_local', 'u4') \g /dev/null

-- ---- A 4xx from the webhook returns the resource to the pool ----------------------------------
SELECT intake.create_pool('tap_reject', 2, '{"validation_webhook_url": "http://127.0.0.1:5597/status/402", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_reject', 'r1') \g /dev/null
SELECT intake.drain('tap_reject') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(status || ' ' || last_status_code, ',') FROM flowgate.deliveries WHERE owner_id LIKE 'tap_reject:%'), 'failed 402',
          'the webhook refuses with 402');
SELECT is((SELECT status FROM intake.allocations WHERE pool_id = 'tap_reject' AND slot = 1), 'available', 'the resource is available again');
SELECT is((SELECT count(*)::int FROM pgmq.q_intake_tap_reject) + (SELECT count(*)::int FROM pgmq.a_intake_tap_reject), 0,
          'the intent is deleted, not archived');
SELECT is((SELECT claims FROM intake.user_claims WHERE pool_id = 'tap_reject' AND user_id = 'r1'), 0, 'the user''s claim is given back');
SELECT is(intake.claim_resource('tap_reject', 'r1') ->> 'status', 'claimed', 'so the user may claim again');
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_reject'), 0, 'nothing reached the ledger');
-- A 409 from the webhook is a request with this key still in progress (an earlier attempt timed
-- out here, and its charge may yet go through): the resource stays the buyer's and the intent
-- waits to be sent again with the same key.
SELECT intake.create_pool('tap_busy', 2, '{"validation_webhook_url": "http://127.0.0.1:5597/status/409", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_busy', 'b1') \g /dev/null
SELECT intake.drain('tap_busy') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(last_status_code::text, ',') FROM flowgate.deliveries WHERE owner_id LIKE 'tap_busy:%'), '409',
          'the webhook answers 409');
SELECT is((SELECT status FROM intake.allocations WHERE pool_id = 'tap_busy' AND slot = 1) || ' ' || (SELECT count(*) FROM pgmq.q_intake_tap_busy)
          || ' ' || (SELECT claims FROM intake.user_claims WHERE pool_id = 'tap_busy' AND user_id = 'b1'),
          'locked 1 1', 'a 409 keeps the resource, the intent and the user''s claim: it is sent again, not released');
SELECT intake.drop_pool('tap_busy') \g /dev/null

-- ---- The outbox behind the drain: reads counted while the request waits are not failures -------
SELECT intake.create_pool('tap_lag', 2, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "visibility_timeout_seconds": 1,
                                          "max_retries": 1, "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_lag', 'l1') \g /dev/null
BEGIN;
SELECT intake.drain('tap_lag') \g /dev/null
-- (The outbox is behind: the validation request is due in an hour.)
UPDATE flowgate.deliveries SET next_attempt_at = now() + interval '1 hour' WHERE owner_id LIKE 'tap_lag:%' \g /dev/null
COMMIT;
SELECT pg_sleep(1.1) \g /dev/null
CREATE TEMP TABLE dlag AS SELECT intake.drain('tap_lag') AS r;
SELECT is((SELECT (r ->> 'read') || ' ' || coalesce(r ->> 'dead_lettered', '0') || ' ' || (SELECT count(*) FROM pgmq.q_intake_tap_lag_dlq) FROM dlag), '1 0 0',
          'read 2 > max_retries while its request is still due: not dead-lettered (the reads counted the outbox''s lag)');
UPDATE flowgate.deliveries SET next_attempt_at = now() WHERE owner_id LIKE 'tap_lag:%' \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_lag'), 1,
          'the answer comes and finds its intent: validated, booked once');
SELECT is((SELECT count(*)::int FROM pgmq.q_intake_tap_lag) + (SELECT count(*)::int FROM pgmq.q_intake_tap_lag_dlq), 0, 'both queues are empty');

-- ---- A 2xx whose handler failed: the payment was taken, so the intent waits for the handler -------
SELECT intake.create_pool('tap_hfail', 2, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "visibility_timeout_seconds": 1,
                                            "max_retries": 1, "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_hfail', 'h1') \g /dev/null
BEGIN;
SELECT intake.drain('tap_hfail') \g /dev/null
-- (As the outbox records it when the webhook answered 2xx and the handler then raised.)
UPDATE flowgate.deliveries SET status = 'delivered', attempts = 1, delivered_at = now(), last_status_code = 200,
       response_body = '{"payment": "pi_h1"}', handler_error = 'XX000: the handler failed'
 WHERE owner_id LIKE 'tap_hfail:%' \g /dev/null
COMMIT;
SELECT pg_sleep(1.1) \g /dev/null
CREATE TEMP TABLE dhfail AS SELECT intake.drain('tap_hfail') AS r;
SELECT is((SELECT coalesce(r ->> 'dead_lettered', '0') || ' ' || (SELECT count(*) FROM pgmq.q_intake_tap_hfail_dlq) FROM dhfail), '0 0',
          'read 2 > max_retries with its webhook''s 2xx not yet applied: not dead-lettered with the payment taken');
SELECT is((SELECT validation ->> 'payment' FROM intake.transactions WHERE pool_id = 'tap_hfail'), 'pi_h1',
          'that read applies the stored answer instead: validated and booked');
SELECT intake.drop_pool('tap_hfail') \g /dev/null

-- ---- A webhook that is down: retried after the visibility timeout, DLQ, replay once it is back --
SELECT intake.create_pool('tap_down', 3, '{"validation_webhook_url": "http://127.0.0.1:1/refused", "commit_target": "http://127.0.0.1:5597/ok",
                                           "visibility_timeout_seconds": 2, "max_retries": 2, "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_down', 'd1') \g /dev/null
CREATE TEMP TABLE dd AS SELECT intake.drain('tap_down') AS r;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(status || ' ' || (last_status_code IS NULL AND last_error IS NOT NULL) || ' ' || (next_attempt_at = 'infinity'), ',')
             FROM flowgate.deliveries WHERE owner_id LIKE 'tap_down:%'),
          'pending true true', 'read 1: the webhook does not answer: its one delivery waits for the next read (parked, not dead)');
SELECT is((SELECT (r ->> 'handed_to_outbox') || ' ' || coalesce(message ->> 'state', 'queued') || ' ' || (message ? 'validation')::text
             FROM dd, pgmq.q_intake_tap_down), '1 queued false',
          'the intent stays queued for its next read: not validated, not dead-lettered');
SELECT alike((SELECT message ->> 'last_error' FROM pgmq.q_intake_tap_down), 'validation:%', 'the error is kept on the intent');
CREATE TEMP TABLE dw AS SELECT intake.drain('tap_down') AS r;
SELECT is((SELECT r ->> 'read' FROM dw), '0', 'it is invisible until the visibility timeout passes');
SELECT is((SELECT r ->> 'status' FROM dw), 'waiting', 'the drain says waiting');
SELECT is((SELECT jsonb_build_object('claimed', s -> 'claimed', 'available', s -> 'available', 'queued', s -> 'queued',
                                     'invisible', s -> 'invisible', 'intact', s -> 'intact', 'next_retry', s -> 'next_retry_at' IS NOT NULL)
             FROM (SELECT intake.pool_status('tap_down') AS s) x),
          '{"claimed": 1, "available": 2, "queued": 0, "invisible": 1, "intact": true, "next_retry": true}',
          'pool_status shows the claim backing off, when it is retried and that the pool is intact');
SELECT alike(intake.pool_status('tap_down') ->> 'last_error', 'validation:%', 'and the latest error');
SELECT pg_sleep(2.1) \g /dev/null
SELECT is(intake.drain('tap_down') ->> 'read', '1', 'read 2 after the visibility timeout');
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT pg_sleep(2.1) \g /dev/null
SELECT is(intake.drain('tap_down') ->> 'dead_lettered', '1', 'read 3 > max_retries: dead-lettered');
SELECT alike((SELECT message ->> 'dlq_reason' FROM pgmq.q_intake_tap_down_dlq), 'read 3 times, more than max_retries = 2%',
            'the DLQ message says why');
SELECT is((SELECT string_agg(status || ' ' || attempts || ' ' || (last_error LIKE 'the intent was dead-lettered: read 3 times%'), ',')
             FROM flowgate.deliveries WHERE owner_id LIKE 'tap_down:%'),
          'dead 2 true', 'its delivery, waiting for a read that will not come, is dead now: a dead delivery is one not tried again');
SELECT is((SELECT status FROM intake.allocations WHERE pool_id = 'tap_down' AND slot = 1), 'locked',
          'its resource stays locked: not sold to anyone else, not lost');
UPDATE intake.engine_config SET validation_webhook_url = 'http://127.0.0.1:5597/ok' WHERE pool_id = 'tap_down';
SELECT is(intake.replay_dlq('tap_down') ->> 'replayed', '1', 'the webhook is back: the operator replays the DLQ');
SELECT intake.drain('tap_down') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(d.status || ' ' || (a.message ->> 'state'), ',')
             FROM flowgate.deliveries d, pgmq.a_intake_tap_down a
            WHERE d.owner_id LIKE 'tap_down:%' AND d.idempotency_key LIKE '%:commit:%'), 'delivered committed',
          'the replayed intent is validated and committed over HTTP');
SELECT is((SELECT count(*)::int FROM pgmq.q_intake_tap_down_dlq) + (SELECT count(*)::int FROM pgmq.q_intake_tap_down), 0, 'both queues are empty');
SELECT is((SELECT array_agg(idempotency_key || ' ' || status || ' ' || attempts) FROM flowgate.deliveries WHERE owner_id LIKE 'tap_down:%' AND idempotency_key LIKE '%:validate:%'),
          (SELECT ARRAY['intake:tap_down:validate:' || (message ->> 'origin_msg_id') || ' delivered 3'] FROM pgmq.a_intake_tap_down),
          'one validation delivery, three attempts before and after the replay, keyed by the first message id');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id LIKE 'tap_down:%' AND idempotency_key LIKE '%:commit:%'), 1,
          'the ledger was called once');

-- ---- A ledger that refuses connections: commits retried without validating again -------------
SELECT intake.create_pool('tap_ledger', 3, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "commit_target": "http://127.0.0.1:1/rpc/finalize_transaction",
                                             "visibility_timeout_seconds": 1, "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_ledger', 'l1') \g /dev/null
SELECT intake.drain('tap_ledger') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(split_part(idempotency_key, ':', 3) || ' ' || status, ',' ORDER BY id) FROM flowgate.deliveries WHERE owner_id LIKE 'tap_ledger:%'),
          'validate delivered,commit pending', 'validated (the handler enqueues the commit, which the outbox sends), but the ledger refuses the connection: the commit waits for the next read');
SELECT is((SELECT message ->> 'state' FROM pgmq.q_intake_tap_ledger), 'validated', 'the intent stays validated');
SELECT pg_sleep(1.1) \g /dev/null
UPDATE intake.engine_config SET commit_target = 'http://127.0.0.1:5597/ok' WHERE pool_id = 'tap_ledger';
SELECT intake.drain('tap_ledger') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(status::text || ' ' || attempts, ',' ORDER BY id) FROM flowgate.deliveries WHERE owner_id LIKE 'tap_ledger:%' AND idempotency_key LIKE '%:commit:%')
            || ' ' || (SELECT string_agg(message ->> 'state', ',') FROM pgmq.a_intake_tap_ledger), 'delivered 2 committed',
          'next read: the ledger is back and the same commit delivery goes through on its second attempt');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id LIKE 'tap_ledger:%' AND idempotency_key LIKE '%:validate:%'), 1,
          'the webhook was called once: the retry skipped validation');
SELECT is((SELECT body #>> '{payload,idempotency_key}' FROM flowgate.deliveries WHERE owner_id LIKE 'tap_ledger:%' AND status = 'delivered' AND idempotency_key LIKE '%:commit:%'),
          (SELECT 'tap_ledger:' || msg_id FROM pgmq.a_intake_tap_ledger), 'the commit is PostgREST-shaped: {"payload": {...}} with the ledger key');

-- A ledger that refuses the entry itself (4xx): kept for an operator in the DLQ, resource locked.
SELECT intake.create_pool('tap_refused', 2, '{"commit_target": "http://127.0.0.1:5597/status/409", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_refused', 'x1') \g /dev/null
SELECT intake.drain('tap_refused') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(split_part(idempotency_key, ':', 3) || ' ' || status || ' ' || last_status_code, ',') FROM flowgate.deliveries WHERE owner_id LIKE 'tap_refused:%'),
          'commit failed 409', 'no webhook configured: straight to the ledger, which answers 409');
SELECT alike((SELECT message ->> 'dlq_reason' FROM pgmq.q_intake_tap_refused_dlq), 'the ledger refused the commit with HTTP 409%', 'dead-lettered with the reason');
SELECT is((SELECT status FROM intake.allocations WHERE pool_id = 'tap_refused' AND slot = 1), 'locked', 'and its resource stays locked');

-- ---- External worker API (an Edge Function doing the HTTP itself) -----------------------------
SELECT intake.create_pool('tap_ext', 2, '{"validation_webhook_url": "https://payments.example.com/validate", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_ext', 'e1') \g /dev/null
SELECT throws_ok(format('SELECT intake.report_commit(%L, %s, 200)', 'tap_ext', (SELECT msg_id FROM pgmq.q_intake_tap_ext)), '55000', NULL,
                 'a ledger reply for an intent its webhook has not validated is refused (55000)');
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_ext'), 0, 'and commits nothing');
SELECT is((SELECT step || ' ' || url || ' ' || (body ->> 'idempotency_key' = msg_id::text)::text FROM intake.read_intents('tap_ext')),
          'validate https://payments.example.com/validate true', 'read_intents hands out the step, URL and body');
SELECT is(intake.report_validation('tap_ext', (SELECT msg_id FROM pgmq.q_intake_tap_ext), 200, '{"payment": "pi_42"}'), 'committed',
          'a 2xx report validates and (ledger in this database) commits');
SELECT is((SELECT validation ->> 'payment' FROM intake.transactions WHERE pool_id = 'tap_ext'), 'pi_42', 'with the webhook''s answer');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id LIKE 'tap_ext:%'), 0, 'and nothing went through the outbox');
SELECT is(intake.report_validation('tap_ext', 999999, 200), 'gone', 'a report for an unknown message changes nothing');
SELECT throws_ok($$SELECT intake.report_validation('tap_ext', 1, 999)$$, '22023', NULL, 'status codes are HTTP statuses');
SELECT throws_ok($$SELECT intake.report_commit('tap_nope', 1, 200)$$, 'P0002', NULL, 'unknown pools are P0002');

-- ---- Queue tables of an older pgmq (Supabase images ship 1.4: no headers, no last_read_at) ---
-- The archive move keeps the columns the queue and its archive both have: here the archive is
-- shaped as pgmq 1.4 makes one, the queue keeps what this pgmq's read needs.
SELECT intake.create_pool('tap_oldmq', 2, '{"validation_webhook_url": "https://payments.example.com/validate", "drain_mode": "external"}') \g /dev/null
ALTER TABLE pgmq.a_intake_tap_oldmq DROP COLUMN headers, DROP COLUMN last_read_at;
ALTER TABLE pgmq.q_intake_tap_oldmq DROP COLUMN headers;
SELECT intake.claim_resource('tap_oldmq', 'o1') \g /dev/null
SELECT is(intake.report_validation('tap_oldmq', (SELECT msg_id FROM pgmq.q_intake_tap_oldmq), 200, '{"payment": "pi_7"}'), 'committed',
          'an intent of a pool whose queue tables lack pgmq 1.5''s and 1.10''s columns commits');
SELECT is((SELECT (message ->> 'state') || ' ' || (message ->> 'user_id') || ' ' || read_ct || ' ' || (enqueued_at IS NOT NULL)::text
             FROM pgmq.a_intake_tap_oldmq), 'committed o1 0 true',
          'and is archived with its message, read count and enqueue time');
SELECT is((SELECT validation ->> 'payment' FROM intake.transactions WHERE pool_id = 'tap_oldmq'), 'pi_7', 'its ledger row written');

-- ---- Realtime: the ledger joins supabase_realtime when that publication exists (not kept) -----
BEGIN;
SELECT is(intake.publish_realtime(), false, 'no supabase_realtime publication: nothing to join');
SET LOCAL client_min_messages = error;  -- "wal_level is insufficient": fine for this check
CREATE PUBLICATION supabase_realtime;
RESET client_min_messages;
SELECT is(intake.publish_realtime(), true, 'with the publication, the ledger is added');
SELECT ok(EXISTS (SELECT FROM pg_publication_tables WHERE pubname = 'supabase_realtime' AND schemaname = 'intake' AND tablename = 'transactions'),
          'intake.transactions is published');
SELECT ok(EXISTS (SELECT FROM pg_publication_tables WHERE pubname = 'supabase_realtime' AND schemaname = 'intake' AND tablename = 'engine_metrics'),
          'and so is intake.engine_metrics, for a live dashboard');
SELECT is(intake.publish_realtime(), true, 'joining again is harmless');
ROLLBACK;

-- ---- Paused pools, metrics (not kept) ---------------------------------------------------------
BEGIN;
-- The background worker samples every pool every few seconds: keep it out of this block and
-- forget its samples of this file's pools. A sample holds its pool's metrics lock (a
-- transaction-level advisory lock, src/intake/metrics.rs), and a sample that finds the lock
-- taken skips the pool. Taken here first (after any sample under way), they make the worker
-- skip these pools, and no sample below finds one of them taken by the worker. Its folding of
-- intake.outcome_log, for the other pools, then waits for this block.
SELECT count(pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('flowgate.intake.metrics:' || p, 0)))
  FROM unnest(pg_temp.pools()) p \g /dev/null
LOCK TABLE intake.outcome_log IN EXCLUSIVE MODE;
DELETE FROM intake.engine_metrics WHERE pool_id = ANY (pg_temp.pools());
UPDATE intake.engine_config SET paused = true WHERE pool_id = 'tap_reject';
SELECT is(intake.drain('tap_reject') ->> 'status', 'paused', 'a paused pool is not drained');
SELECT is((SELECT (m ->> 'available_slots') || '/' || (m ->> 'committed') || '/' || (m ->> 'queue_depth') || '/' || (m ->> 'dlq_depth')
             FROM jsonb_array_elements(intake.collect_metrics('tap_local')) m), '1/3/1/0',
          'metrics: 1 of 5 slots left, 3 committed, 1 queued, empty DLQ');
SELECT is((SELECT (m ->> 'queue_depth') || '/' || (m ->> 'rejected') || '/' || (m ->> 'available_slots')
             FROM jsonb_array_elements(intake.collect_metrics('tap_reject')) m), '1/1/1',
          'one rejected, one queued, one slot left');
SELECT is((SELECT count(*)::int FROM intake.outcome_log WHERE pool_id IN ('tap_local', 'tap_reject')), 0, 'the outcome log is folded into totals');
SELECT is((SELECT array_agg(m ->> 'pool_id' ORDER BY m ->> 'pool_id') FROM jsonb_array_elements(intake.collect_metrics(NULL, 60)) m
            WHERE m ->> 'pool_id' = ANY (pg_temp.pools())),
          ARRAY['tap_down', 'tap_ext', 'tap_lag', 'tap_ledger', 'tap_oldmq', 'tap_refused'], 'a pool sampled less than min_interval ago is skipped');
SELECT throws_ok($$SELECT intake.collect_metrics('tap_nope')$$, 'P0002', NULL, 'metrics of an unknown pool is P0002');
ROLLBACK;

-- ---- A recording round's replies at once (batch handlers), a failing delivery isolated -------
SELECT intake.create_pool('tap_batch', 4, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_batch', u) FROM (VALUES ('b1'), ('b2'), ('b3')) v(u) \g /dev/null
BEGIN;
SELECT is(intake.drain('tap_batch') ->> 'handed_to_outbox', '3', 'the drain hands its three validation requests over in one statement');
-- A fourth delivery for the same handler whose owner names no queue message: the batch form
-- raises on it, so the round falls back to one subtransaction per delivery.
SELECT flowgate.enqueue_delivery('intake', 'tap_batch:not-a-message', 'http://127.0.0.1:5597/ok', 'tap-batch-bogus', '{}',
                                 handler => 'intake.validation') \g /dev/null
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT count(*)::int FROM intake.transactions WHERE pool_id = 'tap_batch'), 3,
          'the three intents are validated and committed though a delivery of their round failed in its handler');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id LIKE 'tap_batch:%' AND handler_error IS NOT NULL), 1,
          'only that delivery keeps a handler error');
SELECT matches((SELECT handler_error FROM flowgate.deliveries WHERE idempotency_key = 'tap-batch-bogus'), 'intake delivery owner',
               'which says what was wrong');

-- ---- A pool dropped and made again under its id ------------------------------------------------
-- Its predecessor's ledger row (message 1) and requests stay; the new queue's message ids go on
-- after theirs, so its intents neither find their ledger key taken nor their request delivered.
SELECT intake.drop_pool('tap_lag') \g /dev/null
SELECT intake.create_pool('tap_lag', 1, '{"validation_webhook_url": "http://127.0.0.1:5597/ok", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_lag', 'l2') \g /dev/null
SELECT intake.drain('tap_lag') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(user_id || ' ' || idempotency_key, ',' ORDER BY finalized_at) FROM intake.transactions WHERE pool_id = 'tap_lag'),
          'l1 tap_lag:1,l2 tap_lag:2', 'the new pool''s intent is booked under a key of its own');

-- ---- A webhook that keeps Idempotency-Keys, and a ledger behind PostgREST ----------------------
-- The webhook answers 500 twice, then 200, and refuses a key sent again with another body (422),
-- as servers that keep keys do; the ledger is PostgREST's RPC, which finds the function by the
-- body's keys (finalize_transaction(payload): a body with any other key is a 404).
-- Supabase's API gateway in front of PostgREST wants the service key as apikey (flowgate-testd
-- refuses a /rest/v1 request without it, 401): a commit target there gets it so.
SELECT flowgate.set_secret('tap_ledger_key', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT format('{"validation_webhook_url": "http://127.0.0.1:5597/strict/2/%s", "commit_target": "http://127.0.0.1:5597/rest/v1/rpc/finalize_transaction",
                "commit_auth_secret": "tap_ledger_key",
                "visibility_timeout_seconds": 1, "max_retries": 5, "drain_mode": "external"}', gen_random_uuid()) AS strict_cfg \gset
SELECT intake.create_pool('tap_strict', 2, :'strict_cfg') \g /dev/null
SELECT intake.claim_resource('tap_strict', 's1') \g /dev/null
SELECT intake.drain('tap_strict') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT pg_sleep(1.1) \g /dev/null
SELECT intake.drain('tap_strict') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT pg_sleep(1.1) \g /dev/null
SELECT intake.drain('tap_strict') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT is((SELECT string_agg(split_part(idempotency_key, ':', 3) || ' ' || status || ' ' || attempts, ',' ORDER BY id)
             FROM flowgate.deliveries WHERE owner_id LIKE 'tap_strict:%'),
          'validate delivered 3,commit delivered 1',
          'three reads send the validation with the same key and the same body (no 422), and the commit goes through PostgREST''s RPC');
SELECT is((SELECT string_agg(message ->> 'state', ',') FROM pgmq.a_intake_tap_strict), 'committed', 'the intent is committed');

-- ---- A dropped pool's requests not sent yet are never sent ---------------------------------------
SELECT intake.create_pool('tap_gone', 2, '{"validation_webhook_url": "http://127.0.0.1:1/refused", "drain_mode": "external"}') \g /dev/null
SELECT intake.claim_resource('tap_gone', 'g1') \g /dev/null
SELECT intake.drain('tap_gone') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle() \g /dev/null
SELECT intake.drop_pool('tap_gone') \g /dev/null
SELECT is((SELECT string_agg(status || ': ' || last_error, ',') FROM flowgate.deliveries WHERE owner_id LIKE 'tap_gone:%'),
          'dead: intake pool tap_gone was dropped before this request was sent',
          'its validation request, waiting for the next read, is dead: no payment call for a pool that is gone');

-- ---- Clean up ---------------------------------------------------------------------------------
SELECT pg_temp.settle() \g /dev/null
SELECT pg_temp.cleanup() \g /dev/null
SELECT flowgate.drop_secret('tap_ledger_key') \g /dev/null
SELECT is((SELECT count(*)::int FROM intake.engine_config WHERE pool_id = ANY (pg_temp.pools()))
            + (SELECT count(*)::int FROM intake.transactions WHERE pool_id = ANY (pg_temp.pools()))
            + (SELECT count(*)::int FROM flowgate.deliveries WHERE owner_module = 'intake' AND split_part(owner_id, ':', 1) = ANY (pg_temp.pools())), 0,
          'the file leaves no pool, ledger row or delivery behind');

SELECT * FROM finish();

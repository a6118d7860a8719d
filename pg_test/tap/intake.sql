-- Intake pools and claims: results, limits, bad input (exact SQLSTATEs, nothing written), and
-- slots lost to aborted claims given back.
BEGIN;
SELECT plan(47);
-- The message (and detail) of the error a statement raises.
CREATE FUNCTION pg_temp.error_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; d text;
BEGIN
    EXECUTE stmt;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
    RETURN m || ' ' || coalesce(d, '');
END $$;

SELECT is(intake.create_pool('tap_drop', 3, '{"max_claims_per_user": 1}') ->> 'queue', 'intake_tap_drop', 'a pool gets its pgmq queue');
SELECT ok(EXISTS (SELECT FROM pgmq.list_queues() WHERE queue_name = 'intake_tap_drop_dlq'), 'and a dead-letter queue');
SELECT is((SELECT count(*)::int FROM intake.allocations WHERE pool_id = 'tap_drop' AND status = 'available'), 3, 'inventory is pre-populated');

SELECT throws_ok($$SELECT intake.create_pool('tap_drop', 3)$$, '23505', NULL, 'a pool id is unique');
SELECT throws_ok($$SELECT intake.create_pool('Bad-Pool', 3)$$, '22023', NULL, 'pool ids are safe identifiers');
SELECT throws_ok($$SELECT intake.create_pool('x; drop table y', 3)$$, '22023', NULL, 'no SQL reaches a queue name');
SELECT is(intake.create_pool(repeat('l', 36), 1) ->> 'dlq', 'intake_' || repeat('l', 36) || '_dlq', 'a 36-character pool id is the longest: its dead-letter queue''s name is pgmq''s longest');
SELECT throws_ok($$SELECT intake.create_pool(repeat('l', 37), 1)$$, '22023', NULL, 'a 37-character one is refused before pgmq would (22023, not P0001)');
-- Default privileges of the creating role do not reach a pool's slot sequence (whoever could
-- setval it would make the pool sell out with nothing sold).
-- Nor its pgmq queue tables (whoever could read or write them would read every user's claim
-- intents, forge or delete them).
ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO PUBLIC;
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC;
SELECT intake.create_pool('tap_defpriv', 2) \g /dev/null
ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM PUBLIC;
SELECT is((SELECT relacl IS NULL OR NOT EXISTS (SELECT FROM aclexplode(relacl) a WHERE a.grantee <> relowner)
             FROM pg_class WHERE oid = 'intake.slots_tap_defpriv'::regclass), true,
          'a new pool''s slot sequence is granted to no one but its owner');
SELECT is((SELECT string_agg(c.relname || ':' || a.privilege_type, ', ' ORDER BY c.relname, a.privilege_type)
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
            WHERE c.relnamespace = 'pgmq'::regnamespace AND c.relname LIKE '%intake\_tap\_defpriv%' AND a.grantee <> c.relowner),
          NULL, 'nor are its queue''s and dead-letter queue''s tables and sequences');
SELECT is((SELECT count(*)::int FROM pg_class WHERE relnamespace = 'pgmq'::regnamespace AND relname LIKE '%intake\_tap\_defpriv%' AND relkind IN ('r', 'S')),
          6, '(six of them: queue, archive and message id sequence, twice)');
SELECT ok((SELECT octet_length(message) < 1200 FROM (SELECT pg_temp.error_of($$SELECT intake.pool_status(repeat('X', 1000000))$$) AS message) m),
          'an error quoting a 1 MB argument quotes at most 1 KiB of it');
SELECT throws_ok($$SELECT intake.create_pool('tap_cred', 1, '{"validation_webhook_url": "https://payuser:S3cr3tPassw0rd@pay.example/validate"}')$$,
                 '22023', NULL, 'a webhook URL with credentials is refused');
SELECT ok(pg_temp.error_of($$SELECT intake.create_pool('tap_cred', 1, '{"validation_webhook_url": "https://payuser:S3cr3tPassw0rd@pay.example/validate"}')$$) NOT LIKE '%S3cr3t%',
          'and the error does not quote the credentials');
-- A direct write of a pool's configuration (the documented way to tune a pool) holds to the
-- same rule: no credentials stored in the table, and so in its dumps.
SELECT throws_ok($$UPDATE intake.engine_config SET validation_webhook_url = 'https://payuser:S3cr3tPassw0rd@pay.example/validate' WHERE pool_id = 'tap_drop'$$,
                 '23514', NULL, 'a direct update to a webhook URL with credentials is refused');
SELECT throws_ok($$UPDATE intake.engine_config SET commit_target = 'https:// pay.example/commit' WHERE pool_id = 'tap_drop'$$,
                 '23514', NULL, 'so is a commit target create_pool would refuse (whitespace)');
SELECT lives_ok($$UPDATE intake.engine_config SET commit_target = 'http://127.0.0.1:5597/ok', validation_webhook_url = NULL WHERE pool_id = 'tap_drop'$$,
                'a URL create_pool accepts may be written directly');
SELECT is((SELECT coalesce(validation_webhook_url, '-') || ' ' || commit_target FROM intake.engine_config WHERE pool_id = 'tap_drop'),
          '- http://127.0.0.1:5597/ok', 'the refused writes left nothing');
UPDATE intake.engine_config SET commit_target = NULL WHERE pool_id = 'tap_drop';
-- Its id and inventory are fixed: nothing re-sizes its slots.
SELECT throws_ok($$UPDATE intake.engine_config SET inventory = inventory + 10 WHERE pool_id = 'tap_drop'$$,
                 '55000', 'pool tap_drop keeps the id and inventory it was created with', 'a direct update of a pool''s inventory is refused (55000)');
SELECT throws_ok($$UPDATE intake.engine_config SET pool_id = 'tap_renamed' WHERE pool_id = 'tap_drop'$$,
                 '55000', NULL, 'and so is one of its id');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"commit_target": 5}')$$, '22023', NULL,
                 'a URL that is not a JSON string is refused as a bad argument (22023), not by the table''s CHECK');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"batchsize": 5}')$$, '22023', NULL, 'unknown config keys are refused');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"paused": "yes"}')$$, '22023', NULL, 'a config value of the wrong JSON type is refused ("yes" for a boolean)');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"batch_size": 1.5}')$$, '22023', NULL, 'so is a fraction for an integer');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"paused": null}')$$, '22023', NULL, 'and null for a setting that must have a value');
SELECT throws_ok($$SELECT intake.create_pool('tap_other', 3, '{"batch_size": 0}')$$, '22023', NULL, 'a value out of its range is 22023 (not the CHECK''s 23514)');
SELECT throws_ok($$SELECT intake.claim_resource('tap_nope', 'u1')$$, 'P0002', NULL, 'an unknown pool is P0002');
SELECT throws_ok($$SELECT intake.claim_resource('tap_drop', '')$$, '22023', NULL, 'an empty user id is refused');
SELECT throws_ok($$SELECT intake.pool_status('tap_nope')$$, 'P0002', NULL, 'the status of an unknown pool is P0002');
SELECT throws_ok($$SELECT intake.reclaim_slots('tap_nope')$$, 'P0002', NULL, 'reclaiming the slots of an unknown pool is P0002');
SELECT is((SELECT count(*)::int FROM intake.engine_config WHERE pool_id = 'tap_other'), 0, 'refused calls wrote nothing');

SELECT is(intake.claim_resource('tap_drop', 'u1') ->> 'status', 'claimed', 'u1 claims');
SELECT is(intake.claim_resource('tap_drop', 'u1') ->> 'status', 'limit_reached', 'u1 may claim only once');

-- A claim that aborts after taking its slot number: the sequence does not roll back.
SAVEPOINT abort_me;
SELECT intake.claim_resource('tap_drop', 'u2') \g /dev/null
ROLLBACK TO SAVEPOINT abort_me;
SELECT is(intake.claim_resource('tap_drop', 'u3') ->> 'slot', '3', 'the next claim gets the next slot');
SELECT is(intake.claim_resource('tap_drop', 'u4') ->> 'status', 'sold_out', 'the counter is past the inventory: sold out');
SELECT is(intake.reclaim_slots('tap_drop'), 1::bigint, 'the slot of the aborted claim is given back');
SELECT is(intake.claim_resource('tap_drop', 'u4') ->> 'slot', '2', 'and claimed by the next user');
SELECT is((SELECT count(*)::int FROM pgmq.q_intake_tap_drop), 3, 'one intent per successful claim (the aborted one left none)');
-- Without anyone calling reclaim_slots: the metrics job gives back an aborted claim's slot once
-- the counter has reached the inventory.
SELECT intake.create_pool('tap_auto', 2) \g /dev/null
SELECT intake.claim_resource('tap_auto', 'a1') \g /dev/null
SAVEPOINT abort_auto;
SELECT intake.claim_resource('tap_auto', 'a2') \g /dev/null
ROLLBACK TO SAVEPOINT abort_auto;
SELECT is(intake.claim_resource('tap_auto', 'a3') ->> 'status', 'sold_out', 'an aborted claim''s slot makes a pool look sold out');
SELECT intake.collect_metrics('tap_auto') \g /dev/null
SELECT is(intake.claim_resource('tap_auto', 'a3') ->> 'slot', '2', 'until the metrics job gives it back');
-- A pool made again under a dropped pool's id numbers its intents after the old one's, though
-- nothing of the old one is left to tell (no ledger row here, no delivery: an external drain,
-- or deliveries pruned): the ids are its ledger keys and request keys.
SELECT intake.create_pool('tap_reborn', 5) \g /dev/null
SELECT intake.claim_resource('tap_reborn', 'r' || g) FROM generate_series(1, 3) g \g /dev/null
SELECT intake.drop_pool('tap_reborn') \g /dev/null
SELECT intake.create_pool('tap_reborn', 5) \g /dev/null
SELECT is((intake.claim_resource('tap_reborn', 'r9') ->> 'msg_id')::bigint, 4::bigint, 'its first intent is message 4, after the dropped pool''s three');
SELECT intake.drop_pool('tap_reborn') \g /dev/null
-- A sample dated in the future (the clock stepped back, or a restore onto a server whose clock
-- is behind) does not stop the scheduled sampling (every 4.5 s), and the reclaim it drives.
UPDATE intake.engine_metrics SET collected_at = collected_at - interval '1 minute' WHERE pool_id = 'tap_auto';
INSERT INTO intake.engine_metrics (pool_id, available_slots, claimed, queue_depth, dlq_depth, committed, rejected, processing_velocity, collected_at)
VALUES ('tap_auto', 0, 2, 2, 0, 0, 0, 0, clock_timestamp() + interval '1 hour');
SELECT count(*) AS auto_samples FROM intake.engine_metrics WHERE pool_id = 'tap_auto' \gset
SELECT intake.collect_metrics(NULL, 4.5) \g /dev/null
SELECT is((SELECT count(*) FROM intake.engine_metrics WHERE pool_id = 'tap_auto') - :auto_samples, 1::bigint,
          'a pool whose latest sample is dated an hour ahead is sampled on schedule');
-- A claim's answer (the jsonb its statement built) is exactly the claim: its slot, its resource,
-- the intent's msg_id, with these keys and types, also when many claims run in one statement.
SELECT is((SELECT intake.claim_resource('tap_drop', 'u9')),
          (SELECT jsonb_build_object('status', 'sold_out', 'pool_id', 'tap_drop')),
          'a sold-out answer has exactly status and pool_id');
SELECT intake.create_pool('tap_many', 42, '{"max_claims_per_user": 1}') \g /dev/null
CREATE TEMP TABLE tap_answers AS SELECT intake.claim_resource('tap_many', 'm' || g) AS a FROM generate_series(1, 40) g;
SELECT is((SELECT count(*)::int FROM tap_answers c
             JOIN pgmq.q_intake_tap_many q ON q.msg_id = (c.a ->> 'msg_id')::bigint
            WHERE c.a = jsonb_build_object('status', 'claimed', 'pool_id', 'tap_many', 'resource_id', q.message ->> 'resource_id',
                                           'slot', (q.message ->> 'slot')::int, 'msg_id', q.msg_id)
              AND q.message ->> 'user_id' = 'm' || (c.a ->> 'slot')),
          40, 'forty claims in one statement: each answer is exactly its intent (slot, resource, msg_id)');
-- Two answers alive in one row: each call's answer outlives the next call's SPI connection.
SELECT is((SELECT (a ->> 'slot') || ',' || (b ->> 'slot')
             FROM (SELECT intake.claim_resource('tap_many', 'x1') AS a, intake.claim_resource('tap_many', 'x2') AS b) s),
          '41,42', 'two claims in one row keep their own answers');
SELECT ok(intake.drop_pool('tap_drop'), 'a pool can be dropped');
SELECT is((SELECT count(*)::int FROM intake.user_claims WHERE pool_id = 'tap_drop')
        + (SELECT count(*)::int FROM intake.allocations WHERE pool_id = 'tap_drop')
        + (SELECT count(*)::int FROM intake.pool_state WHERE pool_id = 'tap_drop'), 0,
          'with its inventory, marker and per-user counts (user_claims has no foreign key: dropped explicitly)');

SELECT * FROM finish();
ROLLBACK;

-- The reference claim_resource of the intake design, for benchmarking only: SELECT … FOR UPDATE SKIP
-- LOCKED LIMIT 1 + UPDATE + pgmq.send over an UNLOGGED table with a partial index on the
-- available rows. Not part of the extension.
DROP SCHEMA IF EXISTS bench_ref CASCADE;
CREATE SCHEMA bench_ref;
CREATE UNLOGGED TABLE bench_ref.allocations (
    resource_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pool_id     text NOT NULL,
    status      text NOT NULL DEFAULT 'available',
    locked_by   text
);
CREATE INDEX allocations_available ON bench_ref.allocations (pool_id) WHERE status = 'available';
SELECT pgmq.create('ref_pool');

CREATE FUNCTION bench_ref.claim_resource(p_pool text, p_user text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r uuid;
    m bigint;
BEGIN
    SELECT resource_id INTO r FROM bench_ref.allocations
     WHERE pool_id = p_pool AND status = 'available' LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF r IS NULL THEN
        RETURN jsonb_build_object('status', 'sold_out');
    END IF;
    UPDATE bench_ref.allocations SET status = 'locked', locked_by = p_user WHERE resource_id = r;
    SELECT * INTO m FROM pgmq.send('ref_pool', jsonb_build_object('pool_id', p_pool, 'resource_id', r, 'user_id', p_user));
    RETURN jsonb_build_object('status', 'claimed', 'resource_id', r, 'msg_id', m);
END
$$;

-- The machine's floor: one logged single-row UPDATE by primary key plus one logged INSERT per
-- transaction (flowgate's slot UPDATE is on an UNLOGGED table; its intent INSERT is logged).
CREATE TABLE bench_ref.floor (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
CREATE TABLE bench_ref.floor_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ref int, at timestamptz DEFAULT now());
INSERT INTO bench_ref.floor (id) SELECT g FROM generate_series(1, 100000) g;

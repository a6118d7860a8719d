-- intake surface: the drain of every pool, the ledger's policies and publication, pool
-- configuration privileges; loaded after every Rust function it names (requires in src/intake/mod.rs).

-- Drain every pool that is not paused, each in its own subtransaction (one broken pool never
-- stops the others). What pg_cron and the background worker run.
CREATE FUNCTION intake.drain_all() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p text;
    results jsonb := '[]';
    msg text;
BEGIN
    FOR p IN SELECT pool_id FROM intake.engine_config WHERE NOT paused AND drain_mode = 'scheduled' ORDER BY pool_id LOOP
        BEGIN
            results := results || jsonb_build_array(intake.drain(p));
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            RAISE WARNING 'intake.drain(%) failed: %', p, msg;
            results := results || jsonb_build_array(jsonb_build_object('pool_id', p, 'status', 'error', 'error', msg));
        END;
    END LOOP;
    RETURN results;
END
$$;

-- The ledger: each user reads their own finalized rows (auth.uid() semantics through
-- flowgate.current_actor(), which is the JWT subject under PostgREST).
CREATE POLICY transactions_own_rows ON intake.transactions FOR SELECT
    USING (user_id = flowgate.current_actor());

-- Add the ledger to Supabase Realtime's publication when it exists (now, or later by calling
-- this again), so clients get their confirmation over websockets.
CREATE FUNCTION intake.publish_realtime() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT FROM pg_publication WHERE pubname = 'supabase_realtime' AND puballtables) THEN
        RETURN true;
    END IF;
    -- The ledger (a fan's app hears about its own row) and the pool metrics (a live dashboard).
    FOREACH t IN ARRAY ARRAY['transactions', 'engine_metrics'] LOOP
        IF NOT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = 'supabase_realtime'
                        AND schemaname = 'intake' AND tablename = t) THEN
            EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE intake.%I', t);
        END IF;
    END LOOP;
    RETURN true;
END
$$;
SELECT intake.publish_realtime();

REVOKE EXECUTE ON FUNCTION intake.create_pool(text, integer, jsonb), intake.drop_pool(text), intake.reclaim_slots(text),
    intake.recover_pool(text), intake.drain(text), intake.drain_all(), intake.replay_dlq(text, bigint[]),
    intake.read_intents(text, integer), intake.report_validation(text, bigint, integer, jsonb, text),
    intake.report_commit(text, bigint, integer, text), intake.finalize_transaction(jsonb),
    intake.collect_metrics(text, double precision), intake.publish_realtime(), intake.pool_status(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION intake.claim_resource(text, text) FROM PUBLIC;
-- The claim statement's plan is the same for every pool and user: plan it once per connection
-- (a generic plan) instead of five custom plans first, which a drop's short-lived connections pay.
ALTER FUNCTION intake.claim_resource(text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION intake.claim(text) SET plan_cache_mode = force_generic_plan;
-- Pool configuration (webhook URLs, secret names) is for the owner and trusted operators.
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON intake.engine_config TO service_role;
    END IF;
END
$grant$;
COMMENT ON FUNCTION intake.drain_all() IS 'Drain every pool that is not paused and has drain_mode scheduled (what the schedule runs).';
COMMENT ON FUNCTION intake.publish_realtime() IS
  'Add intake.transactions and intake.engine_metrics to the supabase_realtime publication if it exists; true when published.';

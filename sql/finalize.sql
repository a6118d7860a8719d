-- Finalize (runs last, after every Rust function exists): SQL that calls or names Rust
-- functions — triggers, PL/pgSQL orchestration, SQL wrappers, RLS policies, views — plus
-- privileges and documentation. One file because pgrx allows a single `finalize` and only the
-- finalize position is guaranteed to follow all generated functions. Sections per module.

-- ==== Core =====================================================================================

CREATE FUNCTION flowgate.settings_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM flowgate.check_setting(NEW.key, NEW.value);
    NEW.updated_at := now();
    NEW.updated_by := flowgate.current_actor();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION flowgate.settings_guard() IS
  'Validates every write to flowgate.settings against the documented type of its key (22023 otherwise).';

CREATE TRIGGER settings_guard BEFORE INSERT OR UPDATE ON flowgate.settings
    FOR EACH ROW EXECUTE FUNCTION flowgate.settings_guard();

-- Settings that name endpoints, secrets, channels, teams, organisations or people (keys ending
-- in _url, _secret, _token, _key, _password, _passphrase, _id, _channel or admins) are read only
-- by the extension owner and service_role; any other role reading one sees its documented
-- default. The rest (role lists, numbers, schedules) stay readable by every role, because
-- flowgate.current_actor() reads the role lists with the caller's rights.
ALTER TABLE flowgate.settings ENABLE ROW LEVEL SECURITY;
CREATE POLICY public_keys ON flowgate.settings FOR SELECT
    USING (key !~ '(_url|_secret|_token|_key|_password|_passphrase|_id|_channel|admins)$');
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        CREATE POLICY service_role_reads ON flowgate.settings FOR SELECT TO service_role USING (true);
    END IF;
END
$grant$;

COMMENT ON FUNCTION flowgate.current_actor() IS
  'The acting identity: the JWT subject from request.jwt.claims (PostgREST/Supabase), else current_user.';
COMMENT ON FUNCTION flowgate.current_actor_info(text) IS
  'The acting identity as JSON (id, role, source, actor_type, trusted); with on_behalf_of, what a trusted '
  'session acting for that actor would be recorded as (42501 for untrusted sessions).';
COMMENT ON FUNCTION flowgate.get_setting(text) IS
  'Effective value of a setting (stored, else default); 22023 for an unknown key. Keys naming URLs, secrets, ids, '
  'channels or admins read as their default except for the extension owner and service_role.';
COMMENT ON FUNCTION flowgate.set_setting(text, jsonb) IS
  'Store a setting after validating it (22023 with the allowed values otherwise); needs write access to flowgate.settings.';
COMMENT ON FUNCTION flowgate.reset_setting(text) IS
  'Forget a stored setting so its documented default applies again.';
COMMENT ON FUNCTION flowgate.check_setting(text, jsonb) IS
  'Raise 22023 unless the value is acceptable for the key; used by the settings trigger.';
COMMENT ON FUNCTION flowgate.setting_definitions() IS
  'Every documented setting: key, kind, allowed values, default, current value and description.';

-- ==== Outbox =====================================================================================

CREATE FUNCTION flowgate.replay_dead(ids bigint[]) RETURNS jsonb
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH wanted AS (SELECT DISTINCT w.id FROM unnest(ids) AS w(id) WHERE w.id IS NOT NULL),
    replayed AS (
        UPDATE flowgate.deliveries d
           SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
               handler_error = NULL, claimed_at = NULL, transport_ref = NULL, updated_at = now()
         WHERE d.id IN (SELECT id FROM wanted) AND d.status IN ('dead', 'failed')
           AND NOT (d.sensitive AND d.body = '{"redacted": true}'::jsonb)
        RETURNING d.id
    ),
    skipped AS (
        SELECT w.id,
               CASE WHEN d.id IS NULL THEN 'no such delivery'
                    WHEN d.status NOT IN ('dead', 'failed') THEN 'it is ' || d.status || ', not dead or failed'
                    ELSE 'it carried secrets and was redacted when it ended: its owner starts a new delivery' END AS why
          FROM wanted w LEFT JOIN flowgate.deliveries d ON d.id = w.id
         WHERE w.id NOT IN (SELECT id FROM replayed)
    )
    SELECT jsonb_build_object(
        'replayed', (SELECT count(*) FROM replayed),
        'ids', (SELECT coalesce(jsonb_agg(id ORDER BY id), '[]'::jsonb) FROM replayed),
        'skipped', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'why', why) ORDER BY id), '[]'::jsonb) FROM skipped))
$$;

CREATE FUNCTION flowgate.drop_secret(name text) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM flowgate.secrets s WHERE s.name = drop_secret.name RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

CREATE FUNCTION flowgate.prune_deliveries(max_rows int DEFAULT 10000) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH old AS (
        SELECT id FROM flowgate.deliveries
         WHERE status = 'delivered'
           AND delivered_at < now() - make_interval(hours => (flowgate.get_setting('flowgate.delivered_retention_hours'))::int)
         ORDER BY delivered_at
         LIMIT max_rows
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM flowgate.deliveries d USING old WHERE d.id = old.id RETURNING 1
    ), old_runs AS (
        -- Job run history past its retention goes with the same housekeeping.
        DELETE FROM flowgate.job_runs r
         WHERE r.id IN (SELECT id FROM flowgate.job_runs
                         WHERE started_at < now() - make_interval(hours => (flowgate.get_setting('flowgate.job_run_retention_hours'))::int)
                         ORDER BY started_at LIMIT max_rows)
    )
    SELECT count(*)::int FROM gone
$$;

-- Outbox and schedules ------------------------------------------------------------------
-- Operator functions: not for PUBLIC. (Reading deliveries is owner-only too.)
REVOKE EXECUTE ON FUNCTION flowgate.collect(), flowgate.replay_dead(bigint[]),
    flowgate.set_secret(text, text), flowgate.drop_secret(text),
    flowgate.rerun_handlers(bigint[]),
    flowgate.record_attempt(bigint, int, text, text, text, text, text),
    flowgate.enqueue_delivery(text, text, text, text, jsonb, text, jsonb, text, text, text, text, int, int, text),
    flowgate.install_schedules(), flowgate.uninstall_schedules(), flowgate.run_periodic(boolean),
    flowgate.run_job(text, text), flowgate.prune_deliveries(int)
  FROM PUBLIC;

COMMENT ON FUNCTION flowgate.collect() IS
  'Record pg_net responses of in-flight deliveries and expire in-flight deliveries past their lease.';
COMMENT ON FUNCTION flowgate.replay_dead(bigint[]) IS
  'Re-queue dead or failed deliveries (attempts reset); returns {replayed, ids, skipped: [{id, why}]}.';
COMMENT ON FUNCTION flowgate.set_secret(text, text) IS
  'Store a named secret for deliveries: in Supabase Vault when installed, else pgcrypto-encrypted under '
  'flowgate.tenant_key_passphrase. Visible ASCII only; the value never appears in an error. Owner only. Returns vault or pgcrypto.';
COMMENT ON FUNCTION flowgate.enqueue_delivery(text, text, text, text, jsonb, text, jsonb, text, text, text, text, int, int, text) IS
  'Enqueue an HTTP delivery; the same idempotency_key returns the first delivery id and writes nothing.';
COMMENT ON FUNCTION flowgate.install_schedules() IS
  'Register every periodic flowgate job with pg_cron (idempotent; schedules from settings).';
COMMENT ON FUNCTION flowgate.uninstall_schedules() IS 'Remove every flowgate job from pg_cron.';
COMMENT ON FUNCTION flowgate.run_periodic(boolean) IS
  'Run the periodic jobs once by hand, each in its own subtransaction with its outcome recorded (flowgate.job_status, '
  'flowgate.job_runs); returns how many ran without error. The background worker runs each job in a transaction of its own.';
COMMENT ON FUNCTION flowgate.run_job(text, text) IS
  'Run one periodic job now and record its outcome, duration and error (flowgate.job_status, flowgate.job_runs); '
  'what pg_cron schedules. A failing job is recorded and answered, not raised.';
COMMENT ON FUNCTION flowgate.prune_deliveries(int) IS
  'Delete delivered deliveries older than flowgate.delivered_retention_hours and job runs older than '
  'flowgate.job_run_retention_hours (at most max_rows each per call); failed and dead deliveries are kept for replay.';

-- ==== Capacity ===================================================================================

-- Capacity: the typed reducer entry point, row-level security, metrics views, privileges.

CREATE FUNCTION capacity.apply_event(request_id text, event capacity.cr_event, payload jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT capacity.apply_event_by_name(request_id, event::text, payload) $$;
COMMENT ON FUNCTION capacity.apply_event(text, capacity.cr_event, jsonb) IS
  'The reducer entry point for trusted sessions (42501 otherwise): apply one event to a request. '
  'Users call capacity.record_capacity_event, which adds per-actor permissions and idempotency.';

-- Who may read a request: its requester, its commercial owner, members of its infra owner
-- group, capacity admins and trusted sessions.
-- SECURITY DEFINER: the capacity.admins setting is not readable by callers; the answer is
-- about the caller only.
CREATE FUNCTION capacity.is_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((flowgate.current_actor_info() ->> 'trusted')::boolean, false)
        OR flowgate.get_setting('capacity.admins') ? flowgate.current_actor()
$$;
COMMENT ON FUNCTION capacity.is_admin() IS 'Whether the caller is a capacity admin (setting capacity.admins) or a trusted session.';

-- The caller's infra groups. SECURITY DEFINER: group membership itself is not public.
CREATE FUNCTION capacity.my_groups() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(array_agg(group_name), '{}') FROM capacity.group_members WHERE user_id = flowgate.current_actor() $$;
COMMENT ON FUNCTION capacity.my_groups() IS 'The infra owner groups the calling actor belongs to.';

CREATE POLICY parties_read ON capacity.capacity_requests FOR SELECT USING (
        requester_user_id = (SELECT flowgate.current_actor())
     OR commercial_owner_user_id = (SELECT flowgate.current_actor())
     OR infra_owner_group = ANY ((SELECT capacity.my_groups())::text[])
     OR (SELECT capacity.is_admin()));
CREATE POLICY parties_read ON capacity.capacity_request_events FOR SELECT USING (
        capacity_request_id IN (SELECT r.id FROM capacity.capacity_requests r));
CREATE POLICY parties_read ON capacity.capacity_request_tasks FOR SELECT USING (
        assigned_to = (SELECT flowgate.current_actor())
     OR capacity_request_id IN (SELECT r.id FROM capacity.capacity_requests r));

-- Metrics. security_invoker: every reader sees only the requests RLS shows them.
CREATE VIEW capacity.v_time_in_state WITH (security_invoker = true) AS
SELECT e.capacity_request_id AS request_id,
       e.to_state AS state,
       e.created_at AS entered_at,
       lead(e.created_at) OVER w AS left_at,
       -- Still there: time so far; terminal states have no duration.
       CASE WHEN lead(e.created_at) OVER w IS NOT NULL THEN lead(e.created_at) OVER w - e.created_at
            WHEN e.to_state IN ('ACTIVATED', 'CANCELLED', 'FAILED') THEN NULL
            ELSE now() - e.created_at END AS time_in_state
  FROM capacity.capacity_request_events e
 WHERE e.from_state IS DISTINCT FROM e.to_state
WINDOW w AS (PARTITION BY e.capacity_request_id ORDER BY e.seq);
COMMENT ON VIEW capacity.v_time_in_state IS
  'How long each request spent in each state (left_at NULL: still there; time_in_state NULL for ACTIVATED, CANCELLED, FAILED).';

CREATE VIEW capacity.v_approval_latency WITH (security_invoker = true) AS
SELECT r.id AS request_id,
       r.state,
       r.created_at AS submitted_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') AS commercial_approved_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED') AS technical_approved_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'CUSTOMER_CONFIRMED') AS customer_confirmed_at,
       min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') - r.created_at AS commercial_approval_latency,
       min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED')
         - min(e.created_at) FILTER (WHERE e.event_type = 'COMMERCIAL_APPROVED') AS technical_review_latency,
       min(e.created_at) FILTER (WHERE e.event_type = 'CUSTOMER_CONFIRMED')
         - min(e.created_at) FILTER (WHERE e.event_type = 'TECH_REVIEW_APPROVED') AS customer_confirmation_latency
  FROM capacity.capacity_requests r
  JOIN capacity.capacity_request_events e ON e.capacity_request_id = r.id
 GROUP BY r.id, r.state, r.created_at;
COMMENT ON VIEW capacity.v_approval_latency IS 'Time from submission to each approval gate, per request.';

CREATE VIEW capacity.v_metrics WITH (security_invoker = true) AS
SELECT count(*) AS requests,
       count(*) FILTER (WHERE EXISTS (SELECT FROM capacity.capacity_request_events e
                                       WHERE e.capacity_request_id = r.id AND e.to_state = 'EXPIRED')) AS expired_count,
       count(*) FILTER (WHERE r.state = 'CANCELLED' AND EXISTS (SELECT FROM capacity.capacity_request_events e
                                       WHERE e.capacity_request_id = r.id AND e.to_state = 'PROVISIONING_IN_PROGRESS'))
           AS cancelled_after_procurement_count,
       count(*) FILTER (WHERE NOT r.state IN ('ACTIVATED', 'CANCELLED', 'EXPIRED', 'FAILED')) AS open_requests,
       count(*) FILTER (WHERE r.state = 'ACTIVATED') AS activated_count
  FROM capacity.capacity_requests r;
COMMENT ON VIEW capacity.v_metrics IS 'Expired count, cancelled-after-procurement count and totals over the requests the reader can see.';
GRANT SELECT ON capacity.v_time_in_state, capacity.v_approval_latency, capacity.v_metrics TO PUBLIC;

-- Timers are for the scheduler (the extension owner), not for every caller.
REVOKE EXECUTE ON FUNCTION capacity.run_capacity_request_timers(timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text) IS
  'Create a Capacity Request (id CR-<year>-<6 digits>) as the caller; returns it with its events.';
COMMENT ON FUNCTION capacity.record_capacity_event(text, text, jsonb, text, text) IS
  'Record an event after checking the caller''s permission; a retried idempotency_key returns the first result.';
COMMENT ON FUNCTION capacity.get_capacity_request(text, integer) IS 'Current state, recent events and allowed events of a request.';
COMMENT ON FUNCTION capacity.run_capacity_request_timers(timestamptz) IS
  'Expire requests past their confirmation deadline (cancellation task for the commercial owner) and warn those close to it.';

-- ==== Intake ------------------------------------------------------------------------------------
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
    intake.collect_metrics(text, double precision), intake.publish_realtime() FROM PUBLIC;
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
COMMENT ON FUNCTION intake.claim(text) IS
  'Claim one resource for the signed-in caller (JWT sub); for browsers through PostgREST. Same results as claim_resource.';
COMMENT ON FUNCTION intake.drain(text) IS
  'Move up to batch_size intents one step: validation webhook, then ledger commit, through the outbox; DLQ after max_retries reads.';
COMMENT ON FUNCTION intake.drain_all() IS 'Drain every pool that is not paused and has drain_mode scheduled (what the schedule runs).';
COMMENT ON FUNCTION intake.replay_dlq(text, bigint[]) IS
  'Re-queue dead-lettered intents (all, or the listed DLQ msg_ids), keeping their idempotency key and validation.';
COMMENT ON FUNCTION intake.read_intents(text, integer) IS
  'External worker API: read intents with the step, URL, idempotency key and body to POST; report with report_validation/report_commit.';
COMMENT ON FUNCTION intake.report_validation(text, bigint, integer, jsonb, text) IS
  'External worker API: apply the validation webhook''s reply (2xx validated, 4xx released, else retried).';
COMMENT ON FUNCTION intake.report_commit(text, bigint, integer, text) IS
  'External worker API: apply the ledger''s reply (2xx committed, 4xx dead-lettered, else retried without re-validating).';
COMMENT ON FUNCTION intake.finalize_transaction(jsonb) IS
  'The ledger RPC: one finalized row per idempotency key; repeats return the first row as duplicate. Grant EXECUTE to the role the drain authenticates as.';
COMMENT ON FUNCTION intake.collect_metrics(text, double precision) IS
  'Write an intake.engine_metrics row per pool from counters (no count(*) over live tables).';
COMMENT ON FUNCTION intake.publish_realtime() IS
  'Add intake.transactions and intake.engine_metrics to the supabase_realtime publication if it exists; true when published.';
COMMENT ON FUNCTION intake.claim_resource(text, text) IS
  'Trusted backends (grant EXECUTE to the service role): claim one resource for a user: claimed (resource_id, slot, msg_id), sold_out, limit_reached or paused. Never the same resource twice.';
COMMENT ON FUNCTION intake.create_pool(text, integer, jsonb) IS 'Create a pool with inventory slots, its pgmq queue and DLQ.';
COMMENT ON FUNCTION intake.recover_pool(text) IS
  'Rebuild a pool''s UNLOGGED inventory, released slots and user counts from its logged pgmq intents (after a crash or restore).';
COMMENT ON FUNCTION intake.reclaim_slots(text) IS 'Give back slots taken by claims that aborted after drawing their number.';
COMMENT ON FUNCTION intake.drop_pool(text) IS 'Remove a pool, its queues, sequence and inventory.';

-- ==== Ops ========================================================================================
-- Gate statuses follow their facts: whenever a check, evidence, approval, exception or
-- deployment of a release is written or deleted, or a gate's required checks change, the
-- release's gates are re-evaluated under its row lock. ops.ingest_event writes facts of the
-- release it is applying and then evaluates that release once (the WHEN clauses skip it
-- meanwhile); any other writer, and any other release, is evaluated row by row here.
CREATE FUNCTION ops.on_gate_fact() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.release_id IS NOT NULL THEN
        PERFORM ops.refresh_gates(NEW.release_id);
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.release_id IS NOT NULL
       AND OLD.release_id IS DISTINCT FROM (CASE WHEN TG_OP = 'UPDATE' THEN NEW.release_id END) THEN
        PERFORM ops.refresh_gates(OLD.release_id);
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.on_gate_fact() FROM PUBLIC;
DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['gate_checks', 'evidence_artifacts', 'approvals', 'exceptions', 'deployments'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refresh_gates_insert AFTER INSERT ON ops.%I FOR EACH ROW '
                                  'WHEN (NOT ops.ingest_applying(NEW.release_id)) EXECUTE FUNCTION ops.on_gate_fact()', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER refresh_gates_update AFTER UPDATE ON ops.%I FOR EACH ROW '
                                  'WHEN (NOT ops.ingest_applying(NEW.release_id) OR OLD.release_id IS DISTINCT FROM NEW.release_id) '
                                  'EXECUTE FUNCTION ops.on_gate_fact()', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER refresh_gates_delete AFTER DELETE ON ops.%I FOR EACH ROW '
                                  'WHEN (NOT ops.ingest_applying(OLD.release_id)) EXECUTE FUNCTION ops.on_gate_fact()', t);
    END LOOP;
END
$triggers$;
CREATE TRIGGER refresh_gates_update AFTER UPDATE OF required_checks ON ops.release_gates FOR EACH ROW
    WHEN (NOT ops.ingest_applying(NEW.release_id)) EXECUTE FUNCTION ops.on_gate_fact();

-- Evidence attached to a gate or check belongs to that gate's release (filled in when omitted,
-- refused when contradicted).
CREATE FUNCTION ops.evidence_release() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner uuid;
BEGIN
    IF NEW.check_id IS NOT NULL THEN
        SELECT c.release_id INTO owner FROM ops.gate_checks c WHERE c.check_id = NEW.check_id;
    ELSIF NEW.gate_id IS NOT NULL THEN
        SELECT g.release_id INTO owner FROM ops.release_gates g WHERE g.gate_id = NEW.gate_id;
    END IF;
    IF owner IS NOT NULL THEN
        IF NEW.release_id IS NOT NULL AND NEW.release_id <> owner THEN
            RAISE EXCEPTION USING ERRCODE = '23514',
                MESSAGE = format('the gate or check of this artifact belongs to release %s, not %s', owner, NEW.release_id),
                HINT = 'omit release_id, or name a gate or check of the same release';
        END IF;
        NEW.release_id := owner;
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.evidence_release() FROM PUBLIC;
CREATE TRIGGER evidence_release BEFORE INSERT OR UPDATE ON ops.evidence_artifacts
    FOR EACH ROW EXECUTE FUNCTION ops.evidence_release();

-- The production promotion block: no staging or production deployment of a release that is
-- not eligible, however the row is written.
CREATE FUNCTION ops.check_promotion() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verdict jsonb;
BEGIN
    verdict := ops.promotion_status(NEW.release_id, NEW.environment);
    IF NOT (verdict->>'eligible')::boolean THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('release %s is not eligible for %s', NEW.release_id, NEW.environment),
            DETAIL = array_to_string(ARRAY(SELECT jsonb_array_elements_text(verdict->'blocking')), '; '),
            HINT = 'pass (or bypass with an approved exception) every gate ops.environment_gate_requirements lists for the environment';
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.check_promotion() FROM PUBLIC;
CREATE TRIGGER promotion_block BEFORE INSERT ON ops.deployments FOR EACH ROW EXECUTE FUNCTION ops.check_promotion();

-- Direct writes keep the rules of ops.ingest_event. Personas write some tables directly (the
-- grants and policies below); everything ingest checks before it writes holds for those rows
-- too. Row-local rules are CHECK constraints in ops.sql (23514). The rest are these triggers:
-- a state change no event can make raises 55000, a value no event can carry raises 22023, each
-- with a DETAIL and a HINT saying what is allowed. Transitions and the immutability of decided
-- rows hold for every writer (ingest makes only allowed moves). The rules about a new row's
-- provenance and times relative to now() hold for writers under row-level security (personas),
-- not for the owner: ingest sets them itself, and restoring a dump re-inserts old rows.
-- The checks run AFTER the row is written (and its RLS policy and CHECKs passed), so a persona
-- writing in someone else's name still gets 42501 first; BEFORE UPDATE triggers only fill in
-- the time of a decision, finish, rollback or resolution the writer left out.

-- A new row written directly records the present and no envelope: created_at, updated_at,
-- recorded_at, started_at and opened_at fall within the writing transaction, ingest_id is empty.
CREATE FUNCTION ops.check_direct_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rec jsonb;
    col text;
    ts timestamptz;
BEGIN
    IF NOT row_security_active(TG_RELID) THEN
        RETURN NULL;
    END IF;
    rec := to_jsonb(NEW);
    IF rec->>'ingest_id' IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('a direct write to ops.%s cannot name an ingest_id', TG_TABLE_NAME),
            DETAIL = format('ingest_id is %s', rec->>'ingest_id'),
            HINT = 'omit ingest_id: only ops.ingest_event records the envelope a row came from';
    END IF;
    FOREACH col IN ARRAY ARRAY['created_at', 'updated_at', 'recorded_at', 'started_at', 'opened_at'] LOOP
        ts := (rec->>col)::timestamptz;
        IF ts < now() OR ts > clock_timestamp() THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('%s of a row written directly to ops.%s must be the time of the write', col, TG_TABLE_NAME),
                DETAIL = format('%s is %s; this transaction started at %s', col, ts, now()),
                HINT = format('omit %s: the database records when a row is written', col);
        END IF;
    END LOOP;
    IF TG_TABLE_NAME = 'environment_events' AND octet_length(rec->>'detail') > 16384 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'detail of an environment event is too large',
            DETAIL = format('it is %s bytes of JSON', octet_length(rec->>'detail')),
            HINT = 'an object of at most 16384 bytes';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.check_direct_insert() FROM PUBLIC;
DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['releases', 'gate_checks', 'approvals', 'evidence_artifacts', 'exceptions', 'deployments',
                             'environment_events', 'incidents', 'recovery_drills'] LOOP
        -- The WHEN clause spares every write by ops.ingest_event (the owner) a PL/pgSQL call.
        EXECUTE pg_catalog.format('CREATE TRIGGER direct_insert AFTER INSERT ON ops.%I FOR EACH ROW '
                                  'WHEN (pg_catalog.row_security_active(%L::regclass)) '
                                  'EXECUTE FUNCTION ops.check_direct_insert()', t, 'ops.' || pg_catalog.quote_ident(t));
    END LOOP;
END
$triggers$;

-- A release written directly gets its four gates, as release_created gives them (ingest
-- creates them itself, in the same transaction).
CREATE FUNCTION ops.create_release_gates(release uuid) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
INSERT INTO ops.release_gates (release_id, gate_code)
SELECT r.release_id, g.code FROM ops.releases r CROSS JOIN unnest(ARRAY['G1', 'G2', 'G3', 'G4']) AS g(code)
 WHERE r.release_id = release
ON CONFLICT (release_id, gate_code) DO NOTHING
$$;
REVOKE EXECUTE ON FUNCTION ops.create_release_gates(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ops.create_release_gates(uuid) TO ci_service_role, release_manager;
CREATE FUNCTION ops.direct_release_gates() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF row_security_active(TG_RELID) THEN
        PERFORM ops.create_release_gates(NEW.release_id);
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.direct_release_gates() FROM PUBLIC;
CREATE TRIGGER release_gates AFTER INSERT ON ops.releases FOR EACH ROW
    WHEN (pg_catalog.row_security_active('ops.releases'::regclass)) EXECUTE FUNCTION ops.direct_release_gates();

-- The time of a decision, finish, rollback or resolution is the database's (as in ingest): an
-- UPDATE that makes the move and leaves the column as it was gets now().
CREATE FUNCTION ops.stamp_transition() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'exceptions' THEN
        IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'requested'
           AND NEW.decided_at IS NOT DISTINCT FROM OLD.decided_at THEN
            NEW.decided_at := now();
        END IF;
    ELSIF TG_TABLE_NAME = 'deployments' THEN
        IF OLD.status = 'started' AND NEW.status <> 'started' AND NEW.finished_at IS NULL THEN
            NEW.finished_at := clock_timestamp();
        END IF;
        IF OLD.status <> 'rolled_back' AND NEW.status = 'rolled_back' AND NEW.rolled_back_at IS NULL THEN
            NEW.rolled_back_at := clock_timestamp();
        END IF;
    ELSIF TG_TABLE_NAME = 'incidents' THEN
        IF OLD.status = 'open' AND NEW.status = 'resolved' AND NEW.resolved_at IS NULL THEN
            NEW.resolved_at := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.stamp_transition() FROM PUBLIC;
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.exceptions FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.deployments FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.incidents FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();

-- Exceptions (exception_requested / exception_decided): a new one expires in the future (at
-- most 90 days after it is requested: CHECK exception_expiry_within_90_days); requested ->
-- approved | rejected, approved -> revoked, nothing else; an expired exception is not approved;
-- decided_by, decided_at and decision_comment change only with the status. The decider is a
-- release manager (grants), in their own name (policy), not the requester (CHECK
-- exception_four_eyes).
CREATE FUNCTION ops.exception_rules() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF row_security_active(TG_RELID) AND NEW.expires_at <= now() THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('exception %s would expire at %s, which is not in the future', NEW.exception_id, NEW.expires_at),
                DETAIL = format('an exception is requested at %s', now()),
                HINT = 'expires_at after now and at most 90 days ahead';
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT ((OLD.status = 'requested' AND NEW.status IN ('approved', 'rejected'))
                OR (OLD.status = 'approved' AND NEW.status = 'revoked')) THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('exception %s cannot go from %s to %s', OLD.exception_id, OLD.status, NEW.status),
                DETAIL = format('it is %s', OLD.status),
                HINT = 'a requested exception may be approved or rejected, an approved one revoked; rejected and revoked ones are final';
        END IF;
        IF NEW.status = 'approved' AND NEW.expires_at <= now() THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('exception %s has already expired', OLD.exception_id),
                DETAIL = format('it expired at %s', NEW.expires_at),
                HINT = 'reject it and request a new exception';
        END IF;
        IF row_security_active(TG_RELID) AND (NEW.decided_at < now() OR NEW.decided_at > clock_timestamp()) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('decided_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                DETAIL = format('decided_at is %s; this transaction started at %s', NEW.decided_at, now()),
                HINT = 'omit decided_at: the database records it';
        END IF;
    ELSIF (NEW.decided_by, NEW.decided_at, NEW.decision_comment)
          IS DISTINCT FROM (OLD.decided_by, OLD.decided_at, OLD.decision_comment) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('the decision on exception %s cannot be changed', OLD.exception_id),
            DETAIL = format('it is %s; decided_by, decided_at and decision_comment change only with the status', OLD.status),
            HINT = 'a requested exception may be approved or rejected, an approved one revoked; rejected and revoked ones are final';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.exception_rules() FROM PUBLIC;
CREATE TRIGGER ingest_rules AFTER INSERT OR UPDATE ON ops.exceptions FOR EACH ROW EXECUTE FUNCTION ops.exception_rules();

-- Deployments (deployment_started / deployment_finished / health_check / rollback): a new one is
-- started with G4 pending; started -> succeeded | failed (finished_at set then), succeeded |
-- failed -> rolled_back (rolled_back_at and a rollback_reason set then), nothing else;
-- g4_status changes only on a succeeded deployment, to passed or failed (CHECK
-- deployment_health_after_success: no health result on a deployment that did not succeed).
CREATE FUNCTION ops.deployment_rules() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF row_security_active(TG_RELID)
           AND (NEW.status <> 'started' OR NEW.g4_status <> 'pending' OR NEW.finished_at IS NOT NULL
                OR NEW.rolled_back_at IS NOT NULL OR NEW.rollback_reason IS NOT NULL) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('deployment %s must be recorded as started', NEW.deployment_id),
                DETAIL = format('status %s, g4_status %s, finished_at %s, rolled_back_at %s, rollback_reason %s',
                                NEW.status, NEW.g4_status, coalesce(NEW.finished_at::text, 'NULL'),
                                coalesce(NEW.rolled_back_at::text, 'NULL'), coalesce(NEW.rollback_reason, 'NULL')),
                HINT = 'insert status started, g4_status pending and no finish or rollback; then update it as it finishes';
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT ((OLD.status = 'started' AND NEW.status IN ('succeeded', 'failed'))
                OR (OLD.status IN ('succeeded', 'failed') AND NEW.status = 'rolled_back')) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('deployment %s cannot go from %s to %s', OLD.deployment_id, OLD.status, NEW.status),
            DETAIL = format('it is %s', OLD.status),
            HINT = 'started -> succeeded or failed; succeeded or failed -> rolled_back; rolled_back is final';
    END IF;
    IF NEW.g4_status IS DISTINCT FROM OLD.g4_status
       AND NOT (OLD.status = 'succeeded' AND NEW.status = 'succeeded' AND NEW.g4_status IN ('passed', 'failed')) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('g4_status of deployment %s cannot go from %s to %s', OLD.deployment_id, OLD.g4_status, NEW.g4_status),
            DETAIL = format('the deployment is %s', OLD.status),
            HINT = 'a health check (g4_status passed or failed) follows a succeeded deployment; it never goes back to pending';
    END IF;
    IF NEW.finished_at IS DISTINCT FROM OLD.finished_at THEN
        IF NOT (OLD.status = 'started' AND NEW.status <> 'started') THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('finished_at of deployment %s cannot be changed', OLD.deployment_id),
                DETAIL = format('the deployment is %s', OLD.status),
                HINT = 'finished_at is set once, when a started deployment succeeds or fails';
        END IF;
        IF row_security_active(TG_RELID) AND (NEW.finished_at < now() OR NEW.finished_at > clock_timestamp()) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('finished_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                DETAIL = format('finished_at is %s; this transaction started at %s', NEW.finished_at, now()),
                HINT = 'omit finished_at: the database records it';
        END IF;
    END IF;
    IF (NEW.rolled_back_at, NEW.rollback_reason) IS DISTINCT FROM (OLD.rolled_back_at, OLD.rollback_reason) THEN
        IF NOT (OLD.status <> 'rolled_back' AND NEW.status = 'rolled_back') THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('the rollback of deployment %s cannot be changed', OLD.deployment_id),
                DETAIL = format('the deployment is %s', OLD.status),
                HINT = 'rolled_back_at and rollback_reason are set once, when a finished deployment is rolled back';
        END IF;
        IF row_security_active(TG_RELID) AND (NEW.rolled_back_at < now() OR NEW.rolled_back_at > clock_timestamp()) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('rolled_back_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                DETAIL = format('rolled_back_at is %s; this transaction started at %s', NEW.rolled_back_at, now()),
                HINT = 'omit rolled_back_at: the database records it';
        END IF;
    END IF;
    IF NEW.status = 'rolled_back' AND OLD.status <> 'rolled_back' AND NEW.rollback_reason IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('the rollback of deployment %s needs a reason', OLD.deployment_id),
            DETAIL = 'rollback_reason is empty',
            HINT = 'set rollback_reason (1 to 4000 characters) with status rolled_back';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.deployment_rules() FROM PUBLIC;
CREATE TRIGGER ingest_rules AFTER INSERT OR UPDATE ON ops.deployments FOR EACH ROW EXECUTE FUNCTION ops.deployment_rules();

-- Incidents (incident_opened / incident_resolved): a new one is open; open -> resolved (with
-- resolved_at and an optional resolution, set then); a resolved incident is final.
CREATE FUNCTION ops.incident_rules() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF row_security_active(TG_RELID) AND (NEW.status <> 'open' OR NEW.resolution IS NOT NULL) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('incident %s must be recorded as open', NEW.incident_id),
                DETAIL = format('status %s, resolution %s', NEW.status, coalesce(NEW.resolution, 'NULL')),
                HINT = 'insert status open without a resolution; then resolve it with an update';
        END IF;
        RETURN NULL;
    END IF;
    IF (NEW.status, NEW.resolution, NEW.resolved_at) IS DISTINCT FROM (OLD.status, OLD.resolution, OLD.resolved_at) THEN
        IF NOT (OLD.status = 'open' AND NEW.status = 'resolved') THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('incident %s cannot go from %s to %s', OLD.incident_id, OLD.status, NEW.status),
                DETAIL = format('it is %s; status, resolution and resolved_at change only when it is resolved', OLD.status),
                HINT = 'open -> resolved, once; a resolved incident is final (open a new one)';
        END IF;
        IF row_security_active(TG_RELID) AND (NEW.resolved_at < now() OR NEW.resolved_at > clock_timestamp()) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('resolved_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                DETAIL = format('resolved_at is %s; this transaction started at %s', NEW.resolved_at, now()),
                HINT = 'omit resolved_at: the database records it';
        END IF;
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.incident_rules() FROM PUBLIC;
CREATE TRIGGER ingest_rules AFTER INSERT OR UPDATE ON ops.incidents FOR EACH ROW EXECUTE FUNCTION ops.incident_rules();

-- Personas. Identity is flowgate.current_actor(): the JWT subject under PostgREST,
-- else the login role. Every policy names the roles it is for; anything not granted here is
-- refused with 42501 (insufficient privilege) or filtered by RLS.
GRANT USAGE ON SCHEMA ops TO ci_service_role, release_manager, qa_tester, sre, developer, audit_reader;

-- audit_reader, release_manager and sre read everything.
GRANT SELECT ON ALL TABLES IN SCHEMA ops TO audit_reader, release_manager, sre;
-- ci_service_role, qa_tester and developer read the release record, not approvals (qa_tester
-- sees their own) or the ingest log (ci sees what it sent).
GRANT SELECT ON ops.releases, ops.release_gates, ops.gate_checks, ops.evidence_artifacts, ops.exceptions,
                ops.deployments, ops.environment_events, ops.incidents, ops.recovery_drills,
                ops.environment_gate_requirements TO ci_service_role, qa_tester, developer;
GRANT SELECT ON ops.approvals TO qa_tester;
GRANT SELECT ON ops.event_ingest_log TO ci_service_role;

-- The release record (everything but approvals and the ingest log) is readable by all six.
DO $policies$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['releases', 'release_gates', 'gate_checks', 'evidence_artifacts', 'exceptions', 'deployments',
                             'environment_events', 'incidents', 'recovery_drills', 'environment_gate_requirements'] LOOP
        EXECUTE pg_catalog.format('CREATE POLICY read_all ON ops.%I FOR SELECT '
                                  'TO audit_reader, release_manager, sre, ci_service_role, qa_tester, developer USING (true)', t);
    END LOOP;
END
$policies$;

-- Approvals: auditors and SREs read all; a release manager reads the approvals of releases
-- they created and their own; a QA tester reads their own.
CREATE POLICY audit_read_approvals ON ops.approvals FOR SELECT TO audit_reader, sre USING (true);
CREATE POLICY release_manager_read_approvals ON ops.approvals FOR SELECT TO release_manager
    USING (approver_id = flowgate.current_actor()
           OR release_id IN (SELECT r.release_id FROM ops.releases r WHERE r.created_by = flowgate.current_actor()));
CREATE POLICY qa_tester_read_approvals ON ops.approvals FOR SELECT TO qa_tester
    USING (approver_id = flowgate.current_actor());

-- The ingest log: auditors, release managers and SREs read all; CI reads what it sent.
CREATE POLICY read_all ON ops.event_ingest_log FOR SELECT TO audit_reader, release_manager, sre USING (true);
CREATE POLICY ci_read_own ON ops.event_ingest_log FOR SELECT TO ci_service_role
    USING (received_by = flowgate.current_actor());

-- Writes, each recorded under the writer's own identity.
GRANT INSERT ON ops.releases TO ci_service_role, release_manager;
CREATE POLICY create_releases ON ops.releases FOR INSERT TO ci_service_role, release_manager
    WITH CHECK (created_by = flowgate.current_actor() AND status = 'open');
GRANT UPDATE (title) ON ops.releases TO release_manager;
CREATE POLICY release_manager_update_own ON ops.releases FOR UPDATE TO release_manager
    USING (created_by = flowgate.current_actor()) WITH CHECK (created_by = flowgate.current_actor());

GRANT INSERT ON ops.gate_checks TO ci_service_role, qa_tester, release_manager;
CREATE POLICY report_checks ON ops.gate_checks FOR INSERT TO ci_service_role, qa_tester, release_manager
    WITH CHECK (reported_by = flowgate.current_actor());

GRANT INSERT ON ops.approvals TO qa_tester, release_manager;
CREATE POLICY qa_tester_insert_approvals ON ops.approvals FOR INSERT TO qa_tester
    WITH CHECK (approver_id = flowgate.current_actor() AND persona_role = 'qa_tester'
                AND gate_id IN (SELECT g.gate_id FROM ops.release_gates g WHERE g.gate_code = 'G2'));
CREATE POLICY release_manager_insert_approvals ON ops.approvals FOR INSERT TO release_manager
    WITH CHECK (approver_id = flowgate.current_actor() AND persona_role = 'release_manager'
                AND gate_id IN (SELECT g.gate_id FROM ops.release_gates g WHERE g.gate_code IN ('G2', 'G3')));

GRANT INSERT ON ops.evidence_artifacts TO ci_service_role, qa_tester, release_manager, sre, developer;
CREATE POLICY submit_evidence ON ops.evidence_artifacts FOR INSERT
    TO ci_service_role, qa_tester, release_manager, sre, developer
    WITH CHECK (submitted_by = flowgate.current_actor());

GRANT INSERT ON ops.exceptions TO developer, release_manager, sre;
CREATE POLICY request_exceptions ON ops.exceptions FOR INSERT TO developer, release_manager, sre
    WITH CHECK (requested_by = flowgate.current_actor() AND status = 'requested');
GRANT UPDATE (status, decided_by, decided_at, decision_comment) ON ops.exceptions TO release_manager;
CREATE POLICY release_manager_decide_exceptions ON ops.exceptions FOR UPDATE TO release_manager
    USING (status IN ('requested', 'approved'))
    WITH CHECK (decided_by = flowgate.current_actor());

GRANT INSERT ON ops.deployments TO ci_service_role, sre, release_manager;
GRANT UPDATE (status, g4_status, finished_at, rolled_back_at, rollback_reason) ON ops.deployments
    TO ci_service_role, sre, release_manager;
CREATE POLICY record_deployments ON ops.deployments FOR INSERT TO ci_service_role, sre, release_manager
    WITH CHECK (deployed_by = flowgate.current_actor());
CREATE POLICY update_deployments ON ops.deployments FOR UPDATE TO ci_service_role, sre, release_manager
    USING (true);

GRANT INSERT ON ops.environment_events TO sre, ci_service_role, release_manager;
CREATE POLICY record_environment_events ON ops.environment_events FOR INSERT TO sre, ci_service_role, release_manager
    WITH CHECK (recorded_by = flowgate.current_actor());

GRANT INSERT, UPDATE (status, resolution, resolved_at) ON ops.incidents TO sre;
CREATE POLICY sre_open_incidents ON ops.incidents FOR INSERT TO sre WITH CHECK (opened_by = flowgate.current_actor());
CREATE POLICY sre_update_incidents ON ops.incidents FOR UPDATE TO sre USING (true);
GRANT INSERT ON ops.recovery_drills TO sre;
CREATE POLICY sre_record_drills ON ops.recovery_drills FOR INSERT TO sre WITH CHECK (performed_by = flowgate.current_actor());

-- Functions: ingest for the personas that send events; evaluation for all six.
REVOKE EXECUTE ON FUNCTION ops.ingest_event(jsonb), ops.evaluate_gate(uuid), ops.is_eligible_for_promotion(uuid, text),
    ops.promotion_status(uuid, text), ops.refresh_gates(uuid), ops.expire_bypasses() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ops.ingest_event(jsonb) TO ci_service_role, release_manager, qa_tester, sre, developer;
GRANT EXECUTE ON FUNCTION ops.evaluate_gate(uuid), ops.is_eligible_for_promotion(uuid, text), ops.promotion_status(uuid, text)
    TO ci_service_role, release_manager, qa_tester, sre, developer, audit_reader;

-- Reporting views. security_invoker: each reader sees what their policies allow.
CREATE VIEW ops.v_release_gate_summary WITH (security_invoker = true) AS
SELECT r.release_id, r.version, r.status AS release_status, g.gate_id, g.gate_code, g.status, g.status_reason,
       g.required_checks,
       coalesce(c.reported, 0) AS checks_reported,
       coalesce(c.passed, 0) AS checks_passed,
       coalesce(c.failed, 0) AS checks_failed,
       coalesce(c.reported - c.passed - c.failed, 0) AS checks_open,
       (SELECT count(*) FROM ops.evidence_artifacts a
         WHERE a.gate_id = g.gate_id
            OR a.check_id IN (SELECT gc.check_id FROM ops.gate_checks gc WHERE gc.gate_id = g.gate_id)) AS evidence_count,
       g.bypass_exception_id, g.bypass_expires_at, g.passed_at, g.evaluated_at
  FROM ops.releases r
  JOIN ops.release_gates g ON g.release_id = r.release_id
  LEFT JOIN LATERAL (
        SELECT count(*) AS reported,
               count(*) FILTER (WHERE l.status = 'pass') AS passed,
               count(*) FILTER (WHERE l.status = 'fail') AS failed
          FROM (SELECT DISTINCT ON (gc.check_name) gc.status
                  FROM ops.gate_checks gc WHERE gc.gate_id = g.gate_id
                 ORDER BY gc.check_name, gc.recorded_at DESC) l) c ON true;
COMMENT ON VIEW ops.v_release_gate_summary IS
  'Per release and gate: status and why, latest result per check (reported/passed/failed/open), evidence count, bypass.';

CREATE VIEW ops.v_promotion_eligibility WITH (security_invoker = true) AS
WITH stored AS (
    SELECT g.release_id, e.environment,
           count(*) = 4 AND NOT coalesce(bool_or(g.bypass_expires_at <= now()), false) AS exact,
           coalesce(bool_and(g.status IN ('passed', 'bypassed')) FILTER (WHERE q.gate_code IS NOT NULL), true) AS eligible,
           coalesce(array_agg(g.gate_code || ' ' || g.status || ': ' || coalesce(g.status_reason, '') ORDER BY g.gate_code)
                    FILTER (WHERE q.gate_code IS NOT NULL AND g.status NOT IN ('passed', 'bypassed')), '{}') AS blocking
      FROM ops.release_gates g
     CROSS JOIN (SELECT DISTINCT environment FROM ops.environment_gate_requirements) e
      LEFT JOIN ops.environment_gate_requirements q ON q.environment = e.environment AND q.gate_code = g.gate_code
     GROUP BY g.release_id, e.environment)
-- CASE, not a lateral join: only a release whose stored statuses are not exact now pays for a
-- fresh evaluation (a lateral join's condition is checked after its function ran).
SELECT r.release_id, r.version, r.status AS release_status, s.environment,
       CASE WHEN s.exact THEN s.eligible
            ELSE (ops.promotion_status(r.release_id, s.environment)->>'eligible')::boolean END AS eligible,
       CASE WHEN s.exact THEN s.blocking
            ELSE ARRAY(SELECT jsonb_array_elements_text(ops.promotion_status(r.release_id, s.environment)->'blocking')) END AS blocking
  FROM ops.releases r
  JOIN stored s ON s.release_id = r.release_id;
COMMENT ON VIEW ops.v_promotion_eligibility IS
  'Eligibility of every release for every environment with requirements, now, with the blocking gates: the stored gate statuses, '
  'or a fresh evaluation (ops.promotion_status) for a release whose bypassing exception has expired since.';

CREATE VIEW ops.v_evidence_completeness WITH (security_invoker = true) AS
SELECT r.release_id, r.version, g.gate_code, rule.evidence_any_of AS required_any_of,
       coalesce(array_agg(DISTINCT a.artifact_type) FILTER (WHERE a.artifact_id IS NOT NULL), '{}') AS present_types,
       count(a.artifact_id) AS artifact_count,
       (cardinality(rule.evidence_any_of) = 0
        OR coalesce(array_agg(DISTINCT a.artifact_type) FILTER (WHERE a.artifact_id IS NOT NULL) && rule.evidence_any_of, false)) AS complete
  FROM ops.releases r
  JOIN ops.release_gates g ON g.release_id = r.release_id
  JOIN ops.gate_rules() rule ON rule.gate_code = g.gate_code
  LEFT JOIN ops.evidence_artifacts a
    ON a.release_id = r.release_id
   AND (a.gate_id = g.gate_id
        OR (a.gate_id IS NULL AND a.check_id IS NULL)
        OR a.check_id IN (SELECT gc.check_id FROM ops.gate_checks gc WHERE gc.gate_id = g.gate_id))
 GROUP BY r.release_id, r.version, g.gate_code, rule.evidence_any_of;
COMMENT ON VIEW ops.v_evidence_completeness IS
  'Per release and gate: the evidence types the gate needs (any of), those attached (release-level evidence counts for every gate), and whether it is complete.';

CREATE VIEW ops.v_exception_status WITH (security_invoker = true) AS
SELECT x.exception_id, x.release_id, r.version, g.gate_code, x.status,
       CASE WHEN x.status = 'requested' AND x.expires_at > now() THEN 'pending_review'
            WHEN x.status IN ('requested', 'approved') AND x.expires_at <= now() THEN 'expired'
            WHEN x.status = 'approved' THEN 'active'
            ELSE x.status END AS effective_status,
       x.reason, x.requested_by, x.decided_by, x.decided_at, x.decision_comment, x.expires_at,
       greatest(x.expires_at - now(), interval '0') AS time_remaining, x.created_at
  FROM ops.exceptions x
  JOIN ops.release_gates g ON g.gate_id = x.gate_id
  JOIN ops.releases r ON r.release_id = x.release_id;
COMMENT ON VIEW ops.v_exception_status IS
  'Exceptions with their effective status now: pending_review, active, expired, rejected or revoked.';

CREATE VIEW ops.v_deployment_history WITH (security_invoker = true) AS
SELECT d.deployment_id, d.release_id, r.version, d.environment, d.status, d.g4_status, d.deployed_by, d.external_ref,
       d.started_at, d.finished_at, d.finished_at - d.started_at AS duration,
       d.rolled_back_at, d.rollback_reason,
       lag(r.version) OVER (PARTITION BY d.environment ORDER BY d.recorded_at) AS previous_version,
       (SELECT max(e.created_at) FROM ops.environment_events e
         WHERE e.deployment_id = d.deployment_id AND e.event_kind = 'health_check') AS health_checked_at
  FROM ops.deployments d
  JOIN ops.releases r ON r.release_id = d.release_id;
COMMENT ON VIEW ops.v_deployment_history IS
  'Deployments and rollbacks per environment with G4 status, the version they replaced and when health was checked.';

GRANT SELECT ON ops.v_release_gate_summary, ops.v_promotion_eligibility, ops.v_evidence_completeness,
                ops.v_exception_status, ops.v_deployment_history
    TO ci_service_role, release_manager, qa_tester, sre, developer, audit_reader;

-- Supabase's service_role (a trusted role by default) may send every event and read everything.
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA ops TO service_role;
        GRANT SELECT ON ALL TABLES IN SCHEMA ops TO service_role;
        GRANT EXECUTE ON FUNCTION ops.ingest_event(jsonb), ops.evaluate_gate(uuid),
            ops.is_eligible_for_promotion(uuid, text), ops.promotion_status(uuid, text) TO service_role;
    END IF;
END
$grant$;

COMMENT ON FUNCTION ops.ingest_event(jsonb) IS
  'Ingest one event envelope; returns {ingest_id, status: accepted|duplicate|rejected|error, detail} and sets response.status '
  '(200, 400, 403, 409, 413, 422, 500). Every call is logged in ops.event_ingest_log.';
COMMENT ON FUNCTION ops.evaluate_gate(uuid) IS 'Current status of a gate from its facts: pending, in_progress, passed, failed or bypassed.';
COMMENT ON FUNCTION ops.is_eligible_for_promotion(uuid, text) IS
  'Whether every gate the environment requires is passed, or bypassed by an approved unexpired exception, now.';
COMMENT ON FUNCTION ops.promotion_status(uuid, text) IS 'Eligibility with the blocking gates and why.';
COMMENT ON FUNCTION ops.refresh_gates(uuid) IS 'Recompute and store a release''s gate statuses (run by triggers).';
COMMENT ON FUNCTION ops.ingest_applying(uuid) IS
  'Whether ops.ingest_event in this session is applying an event to the release (the gate triggers then leave its evaluation to the ingest).';
COMMENT ON FUNCTION ops.expire_bypasses() IS 'Re-evaluate gates whose bypassing exception expired (scheduled).';
COMMENT ON FUNCTION ops.gate_rules() IS 'What each gate requires: evidence types, approver personas, the rule.';

-- ==== Provisioning ================================================================================
-- What an admin API's GET /clients/provisioning/jobs returns: jobs, newest first, optionally of one status.
CREATE FUNCTION provisioning.list_jobs(status text DEFAULT NULL, max_rows int DEFAULT 100)
RETURNS TABLE (job_id uuid, client_id uuid, slug text, job_type text, job_status text, attempts int, max_attempts int,
               next_attempt_at timestamptz, claimed_by text, claimed_at timestamptz, lease_expires_at timestamptz,
               last_error text, last_status_code int, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT coalesce((flowgate.current_actor_info() ->> 'trusted')::boolean, false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('permission denied: %s may not list provisioning jobs', flowgate.current_actor()),
            HINT = 'trusted sessions (superuser, or members of a role in flowgate.trusted_roles, e.g. service_role)';
    END IF;
    IF status IS NOT NULL AND status NOT IN ('queued', 'running', 'succeeded', 'failed') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid status: %L', status),
            HINT = 'allowed: queued, running, succeeded, failed, or NULL for all';
    END IF;
    RETURN QUERY
    SELECT j.job_id, j.client_id, c.slug, j.job_type, j.status, j.attempts, j.max_attempts, j.next_attempt_at, j.claimed_by,
           j.claimed_at, j.lease_expires_at, j.last_error, j.last_status_code, j.created_at, j.updated_at
      FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c ON c.client_id = j.client_id
     WHERE list_jobs.status IS NULL OR j.status = list_jobs.status
     ORDER BY j.created_at DESC, j.job_id
     LIMIT greatest(1, least(max_rows, 10000));
END
$$;

-- An admin page's view: clients not ready, with their latest job and error.
CREATE VIEW provisioning.v_admin_diagnostics WITH (security_invoker = true) AS
SELECT c.client_id, c.slug, c.display_name, c.provisioning_status, c.provisioning_error, c.schema_version, c.project_ref,
       j.job_id AS latest_job_id, j.job_type AS latest_job_type, j.status AS latest_job_status, j.attempts, j.max_attempts,
       j.next_attempt_at, j.claimed_by, j.last_error AS latest_job_error, j.last_status_code,
       c.created_at, c.updated_at
  FROM provisioning.clients c
  LEFT JOIN LATERAL (SELECT * FROM provisioning.client_provisioning_jobs j
                      WHERE j.client_id = c.client_id ORDER BY j.created_at DESC LIMIT 1) j ON true
 WHERE c.provisioning_status <> 'ready';
COMMENT ON VIEW provisioning.v_admin_diagnostics IS 'Queued, in-progress and failed clients with their latest job and most recent error.';

-- Provisioning latency per phase, from the job events: wait (enqueued → first claim) and run
-- (first claim → succeeded), over jobs that succeeded.
CREATE VIEW provisioning.v_phase_latency WITH (security_invoker = true) AS
WITH spans AS (
    SELECT j.job_type,
           min(e.created_at) FILTER (WHERE e.event_type = 'enqueued') AS enqueued_at,
           min(e.created_at) FILTER (WHERE e.event_type = 'claimed') AS first_claimed_at,
           max(e.created_at) FILTER (WHERE e.event_type = 'succeeded') AS succeeded_at,
           max(j.attempts) AS attempts
      FROM provisioning.client_provisioning_jobs j JOIN provisioning.job_events e ON e.job_id = j.job_id
     WHERE j.status = 'succeeded'
     GROUP BY j.job_id, j.job_type)
SELECT job_type, count(*) AS jobs,
       avg(attempts)::numeric(6, 2) AS avg_attempts,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_claimed_at - enqueued_at)) AS wait_p50_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM succeeded_at - first_claimed_at)) AS run_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM succeeded_at - first_claimed_at)) AS run_p95_s,
       max(extract(epoch FROM succeeded_at - enqueued_at)) AS total_max_s
  FROM spans GROUP BY job_type;
COMMENT ON VIEW provisioning.v_phase_latency IS 'Provisioning latency per phase (job type): queue wait and run time, p50/p95, over succeeded jobs.';

-- Operators (trusted sessions) run everything. The operator functions are SECURITY DEFINER (the
-- tables are the owner's) and check trust themselves first; EXECUTE is not PUBLIC's either, and
-- service_role gets it here (grant it to other roles listed in flowgate.trusted_roles). Tenants
-- see nothing here: the tables hold project refs and encrypted keys.
REVOKE EXECUTE ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb), provisioning.claim_job(text),
    provisioning.report_job(uuid, text, boolean, integer, text, integer), provisioning.retry(uuid), provisioning.retry(text), provisioning.sync_schema(text),
    provisioning.list_jobs(text, integer), provisioning.run_jobs(integer), provisioning.tenant_keys(uuid) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA provisioning TO service_role;
        GRANT SELECT ON ALL TABLES IN SCHEMA provisioning TO service_role;
        GRANT EXECUTE ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb), provisioning.claim_job(text),
            provisioning.report_job(uuid, text, boolean, integer, text, integer), provisioning.retry(uuid), provisioning.retry(text), provisioning.sync_schema(text),
            provisioning.list_jobs(text, integer), provisioning.run_jobs(integer), provisioning.tenant_keys(uuid)
            TO service_role;
        CREATE POLICY service_role_reads ON provisioning.clients FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.client_provisioning_jobs FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.job_events FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.migrations FOR SELECT TO service_role USING (true);
    END IF;
END
$grant$;
COMMENT ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb) IS 'Register a tenant and queue its create_project job (operators).';
COMMENT ON FUNCTION provisioning.claim_job(text) IS 'Claim the oldest due job (expired leases first) for a worker; NULL when none is due.';
COMMENT ON FUNCTION provisioning.report_job(uuid, text, boolean, integer, text, integer) IS
  'End an attempt: success, or failure with its HTTP status (transient ones retry with back-off and jitter; other 4xx fail at once).';
COMMENT ON FUNCTION provisioning.retry(uuid) IS 'Operator retry: the client''s failed or waiting jobs start over now (attempts = 0).';
COMMENT ON FUNCTION provisioning.retry(text) IS 'Operator retry naming the client by its slug or its id.';
COMMENT ON FUNCTION provisioning.sync_schema(text) IS
  'Queue a schema_sync job for every ready client behind the newest migration (or the one named by slug or id).';
COMMENT ON FUNCTION provisioning.list_jobs(text, integer) IS 'Provisioning jobs, newest first, optionally of one status.';
COMMENT ON FUNCTION provisioning.run_jobs(integer) IS
  'Claim and start due jobs; their Management API calls go through the outbox and each answer moves the job on (scheduled).';
COMMENT ON FUNCTION provisioning.tenant_keys(uuid) IS 'Decrypt a tenant''s anon key, service key and database password (operators only).';

-- ==== Dashboard ===================================================================================
-- One self-contained HTML page (inline SVG, no external asset, no script) that PostgREST serves
-- as text/html: a function returning the "text/html" domain is PostgREST's media-type handler,
-- so GET /rest/v1/rpc/dashboard with `Accept: text/html` returns the page. It reads as its
-- caller (SECURITY INVOKER): each reader sees what their privileges and row-level security show.
CREATE DOMAIN flowgate."text/html" AS text;
COMMENT ON DOMAIN flowgate."text/html" IS 'HTML text; PostgREST answers a function returning it with Content-Type text/html.';

CREATE FUNCTION flowgate.html(t text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT replace(replace(replace(replace(replace(coalesce(t, ''), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
$$;
COMMENT ON FUNCTION flowgate.html(text) IS 'The text escaped for HTML (& < > " ''); NULL is empty.';

-- An SVG polyline of the values, oldest first, scaled into a width x height box.
CREATE FUNCTION flowgate.svg_line(vals numeric[], colour text, width int DEFAULT 320, height int DEFAULT 60) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN coalesce(array_length(vals, 1), 0) = 0 THEN '' ELSE
      format('<polyline fill="none" stroke="%s" stroke-width="1.5" data-points="%s" points="%s"/>',
             flowgate.html(colour), array_length(vals, 1),
             (SELECT string_agg(
                       round(CASE WHEN n = 1 THEN 0 ELSE (i - 1) * width::numeric / (n - 1) END, 1)::text || ',' ||
                       round(height - CASE WHEN hi = lo THEN height / 2.0 ELSE (v - lo) * height / (hi - lo) END, 1)::text, ' ' ORDER BY i)
                FROM (SELECT v, i, count(*) OVER () AS n, min(v) OVER () AS lo, max(v) OVER () AS hi
                        FROM unnest(vals) WITH ORDINALITY AS u(v, i)) x))
    END
$$;

CREATE FUNCTION flowgate.dashboard(refresh_seconds int DEFAULT 10, samples int DEFAULT 60) RETURNS flowgate."text/html"
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    page text;
    part text;
    r record;
BEGIN
    IF refresh_seconds IS NULL OR refresh_seconds NOT BETWEEN 1 AND 3600 OR samples IS NULL OR samples NOT BETWEEN 2 AND 1440 THEN
        RAISE EXCEPTION 'invalid dashboard arguments: refresh_seconds %, samples %', refresh_seconds, samples
              USING ERRCODE = '22023', HINT = 'refresh_seconds 1 to 3600, samples 2 to 1440';
    END IF;
    page := format('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="%s">'
        '<title>flowgate</title><style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}'
        'table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}'
        'th{background:#f3f3f3}svg{background:#fafafa;border:1px solid #ddd}.pool{margin:0 0 1.5em}'
        '.muted{color:#777}</style></head><body><h1>flowgate</h1><p class="muted">as of %s; refreshes every %s s</p>',
        refresh_seconds, flowgate.html(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')), refresh_seconds);

    -- Pools: drain over time from engine_metrics.
    page := page || '<h2>Intake pools</h2>';
    part := '';
    FOR r IN
        SELECT m.pool_id, array_agg(m.available_slots::numeric ORDER BY m.collected_at) AS available,
               array_agg(m.queue_depth::numeric ORDER BY m.collected_at) AS queue,
               array_agg(m.processing_velocity ORDER BY m.collected_at) AS velocity,
               array_agg(m.dlq_depth::numeric ORDER BY m.collected_at) AS dlq,
               (array_agg(m.available_slots ORDER BY m.collected_at DESC))[1] AS last_available,
               (array_agg(m.queue_depth ORDER BY m.collected_at DESC))[1] AS last_queue,
               (array_agg(m.processing_velocity ORDER BY m.collected_at DESC))[1] AS last_velocity,
               (array_agg(m.dlq_depth ORDER BY m.collected_at DESC))[1] AS last_dlq
          FROM (SELECT *, row_number() OVER (PARTITION BY pool_id ORDER BY collected_at DESC) AS rn FROM intake.engine_metrics) m
         WHERE m.rn <= samples
         GROUP BY m.pool_id ORDER BY m.pool_id
    LOOP
        part := part || format('<div class="pool" id="pool-%s"><h3>%s</h3><p>available %s · queue %s · %s committed/s · DLQ %s</p>'
            '<svg width="320" height="60" viewBox="0 0 320 60" role="img" aria-label="pool %s over time">%s%s%s%s</svg></div>',
            flowgate.html(r.pool_id), flowgate.html(r.pool_id), r.last_available, r.last_queue, r.last_velocity, r.last_dlq,
            flowgate.html(r.pool_id),
            flowgate.svg_line(r.available, '#2a7'), flowgate.svg_line(r.queue, '#27c'),
            flowgate.svg_line(r.velocity, '#c72'), flowgate.svg_line(r.dlq, '#c22'));
    END LOOP;
    page := page || coalesce(nullif(part, ''), '<p class="muted">no pool metrics yet</p>');

    -- Outbox health per destination.
    page := page || '<h2>Outbox</h2><table id="outbox"><tr><th>module</th><th>destination</th><th>status</th><th>deliveries</th><th>oldest</th><th>latest error</th></tr>';
    FOR r IN SELECT * FROM flowgate.outbox_summary ORDER BY module, destination, status LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>',
            flowgate.html(r.module), flowgate.html(r.destination), flowgate.html(r.status::text), r.deliveries,
            flowgate.html(to_char(r.oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')), flowgate.html(r.last_error));
    END LOOP;
    page := page || '</table>';

    -- Capacity requests that wait for someone: their age and who holds the next decision.
    page := page || '<h2>Capacity requests</h2><table id="capacity"><tr><th>request</th><th>state</th><th>waiting</th><th>next decision</th></tr>';
    FOR r IN
        SELECT id, state, now() - updated_at AS age,
               CASE state WHEN 'COMMERCIAL_APPROVAL_REQUIRED' THEN 'commercial owner ' || commercial_owner_user_id
                          WHEN 'TECHNICAL_REVIEW_REQUIRED' THEN 'infra group ' || infra_owner_group
                          WHEN 'CUSTOMER_CONFIRMATION_REQUIRED' THEN 'customer, via requester ' || requester_user_id
                          WHEN 'PROVISIONING_IN_PROGRESS' THEN 'infra group ' || infra_owner_group
                          WHEN 'READY_FOR_CUSTOMER' THEN 'requester ' || requester_user_id
                          WHEN 'EXPIRED' THEN 'commercial owner ' || commercial_owner_user_id END AS holder
          FROM capacity.capacity_requests
         WHERE state NOT IN ('ACTIVATED', 'CANCELLED', 'FAILED')
         ORDER BY updated_at LIMIT 200
    LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>', flowgate.html(r.id), flowgate.html(r.state::text),
            flowgate.html(justify_interval(date_trunc('minute', r.age))::text), flowgate.html(r.holder));
    END LOOP;
    page := page || '</table>';

    -- Release gates per release.
    page := page || '<h2>Release gates</h2><table id="gates"><tr><th>release</th><th>status</th><th>G1</th><th>G2</th><th>G3</th><th>G4</th></tr>';
    FOR r IN
        SELECT rel.version, rel.status,
               max(g.status) FILTER (WHERE g.gate_code = 'G1') AS g1, max(g.status) FILTER (WHERE g.gate_code = 'G2') AS g2,
               max(g.status) FILTER (WHERE g.gate_code = 'G3') AS g3, max(g.status) FILTER (WHERE g.gate_code = 'G4') AS g4
          FROM ops.releases rel LEFT JOIN ops.release_gates g ON g.release_id = rel.release_id
         GROUP BY rel.release_id, rel.version, rel.status, rel.created_at ORDER BY rel.created_at DESC LIMIT 50
    LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>',
            flowgate.html(r.version), flowgate.html(r.status), flowgate.html(r.g1), flowgate.html(r.g2), flowgate.html(r.g3), flowgate.html(r.g4));
    END LOOP;
    page := page || '</table></body></html>';
    RETURN page;
END
$$;
REVOKE EXECUTE ON FUNCTION flowgate.dashboard(int, int) FROM PUBLIC;
COMMENT ON FUNCTION flowgate.dashboard(int, int) IS
  'One self-contained HTML page (inline SVG, no script) of pool drains, outbox health, capacity requests and release gates; '
  'served by PostgREST as text/html (Accept: text/html). Runs with the caller''s rights; owner only by default.';

-- ==== Privileges as a feature ======================================================================
-- What a backend role (or PostgREST's authenticated role) needs to call each module's API, and
-- nothing more. Operator functions stay owner-only; trusted-only entry points check trust
-- themselves, so granting them to an untrusted role gives it nothing but a 42501.
CREATE FUNCTION flowgate.grant_api(role_name text, modules text[] DEFAULT ARRAY['flowgate', 'capacity', 'intake', 'provisioning'])
RETURNS TABLE (module text, granted text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m text;
    f text;
    api jsonb := '{
      "flowgate": ["flowgate.current_actor()", "flowgate.current_actor_info(text)", "flowgate.link_identity(text, text, text)",
                   "flowgate.unlink_identity(text, text)", "flowgate.get_setting(text)", "flowgate.setting_definitions()"],
      "capacity": ["capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text)",
                   "capacity.record_capacity_event(text, text, jsonb, text, text)", "capacity.get_capacity_request(text, integer)",
                   "capacity.my_standing(text)", "capacity.handle_slack_command(text, text, text)",
                   "capacity.handle_slack_action(text, text, text)"],
      "intake": ["intake.claim(text)", "intake.claim_resource(text, text)", "intake.finalize_transaction(jsonb)"],
      "provisioning": ["provisioning.enqueue_client(text, text, text, text, jsonb)", "provisioning.claim_job(text)",
                       "provisioning.report_job(uuid, text, boolean, integer, text, integer)", "provisioning.retry(uuid)", "provisioning.retry(text)", "provisioning.sync_schema(text)",
                       "provisioning.list_jobs(text, integer)", "provisioning.run_jobs(integer)", "provisioning.tenant_keys(uuid)"]
    }';
BEGIN
    IF role_name IS NULL OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'role % does not exist', quote_literal(coalesce(role_name, 'NULL'))
              USING ERRCODE = '22023', HINT = 'CREATE ROLE it first, or name an existing role such as service_role';
    END IF;
    IF role_name IN ('anon', 'public') THEN
        RAISE EXCEPTION 'the API is not granted to %', role_name
              USING ERRCODE = '22023', HINT = 'anonymous callers get only what PUBLIC gets; grant to authenticated or a backend role';
    END IF;
    FOREACH m IN ARRAY coalesce(modules, '{}') LOOP
        IF m = 'ops' THEN
            RAISE EXCEPTION 'ops access is by persona, not by grant_api'
                  USING ERRCODE = '22023', HINT = format('GRANT ci_service_role (or release_manager, qa_tester, sre, developer, audit_reader) TO %I', role_name);
        END IF;
        IF NOT api ? m THEN
            RAISE EXCEPTION 'unknown module %', quote_literal(m)
                  USING ERRCODE = '22023', HINT = 'one of: flowgate, capacity, intake, provisioning';
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', m, role_name);
        module := m; granted := 'USAGE ON SCHEMA ' || m; RETURN NEXT;
        FOR f IN SELECT jsonb_array_elements_text(api -> m) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, role_name);
            module := m; granted := 'EXECUTE ON FUNCTION ' || f; RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION flowgate.grant_api(text, text[]) FROM PUBLIC;
COMMENT ON FUNCTION flowgate.grant_api(text, text[]) IS
  'Grant a role exactly what calling the modules'' API needs (schema usage, EXECUTE on the entry points); owner only. '
  'Trusted-only entry points (claim_resource, provisioning) still check trust. ops is by persona membership.';
DO $grant_backend$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        PERFORM flowgate.grant_api('service_role', ARRAY['flowgate', 'capacity', 'intake']);
    END IF;
END
$grant_backend$;

-- ==== Exposure ====================================================================================
-- PostgREST's anon and authenticated roles get what PUBLIC gets above (reads under row-level
-- security, the SECURITY DEFINER entry points) and nothing more: whatever default privileges of
-- the installing role granted them on these schemas' tables, sequences and functions is taken back.
DO $exposure$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON ALL ROUTINES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
        END IF;
    END LOOP;
END
$exposure$;

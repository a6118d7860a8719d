-- flowgate core, part 3 (surface): the SQL that calls or names core's Rust functions — the
-- settings trigger and policies, the outbox's operator functions, privileges and documentation
-- of SQL-written functions. Loaded after every function it names (its requires in src/core/mod.rs).

CREATE FUNCTION flowgate.settings_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM flowgate.check_setting(NEW.key, NEW.value);
    -- A restore keeps when and by whom each setting was last written, as the dump has it.
    IF TG_OP = 'INSERT' AND NEW.updated_at IS NOT NULL AND NEW.updated_by IS NOT NULL
       AND flowgate.restore_loading_settings() THEN
        RETURN NEW;
    END IF;
    NEW.updated_at := now();
    NEW.updated_by := flowgate.current_actor();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION flowgate.settings_guard() IS
  'Validates every write to flowgate.settings against the documented type of its key (22023 otherwise) and stamps updated_at and updated_by (a restore keeps the dump''s).';

CREATE TRIGGER settings_guard BEFORE INSERT OR UPDATE ON flowgate.settings
    FOR EACH ROW EXECUTE FUNCTION flowgate.settings_guard();

-- Settings that name endpoints, secrets, channels, teams, organisations or people (keys ending
-- in _url, _secret, _token, _key, _password, _passphrase, _id, _ids, _channel or admins) are read only
-- by the extension owner and service_role; any other role reading one sees its documented
-- default. The rest (role lists, numbers, schedules) stay readable by every role, because
-- flowgate.current_actor() reads the role lists with the caller's rights.
ALTER TABLE flowgate.settings ENABLE ROW LEVEL SECURITY;
CREATE POLICY public_keys ON flowgate.settings FOR SELECT
    USING (key !~ '(_url|_secret|_token|_key|_password|_passphrase|_id|_ids|_channel|admins|flow_limits)$');
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        CREATE POLICY service_role_reads ON flowgate.settings FOR SELECT TO service_role USING (true);
    END IF;
END
$grant$;


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
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped bigint;
    in_vault bigint := 0;
BEGIN
    -- The names set_secret stores, and no other (a module's own secrets, such as tenant keys,
    -- are named otherwise and are not this function's to drop).
    IF drop_secret.name IS NULL OR drop_secret.name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,127}$' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid secret name: ' || coalesce(pg_catalog.quote_literal(pg_catalog.left(drop_secret.name, 64)), 'NULL'),
            HINT = '1 to 128 of A-Za-z0-9_.-, starting with a letter: a name flowgate.set_secret() stores';
    END IF;
    DELETE FROM flowgate.secrets s WHERE s.name = drop_secret.name;
    GET DIAGNOSTICS dropped = ROW_COUNT;
    -- Vault is read first when a delivery is sent: a secret left there would still be sent.
    IF pg_catalog.to_regnamespace('vault') IS NOT NULL AND pg_catalog.has_schema_privilege('vault', 'USAGE')
       AND pg_catalog.to_regclass('vault.secrets') IS NOT NULL AND pg_catalog.has_table_privilege('vault.secrets', 'DELETE') THEN
        EXECUTE 'DELETE FROM vault.secrets WHERE name = $1' USING drop_secret.name;
        GET DIAGNOSTICS in_vault = ROW_COUNT;
    END IF;
    RETURN dropped + in_vault > 0;
END
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

COMMENT ON FUNCTION flowgate.replay_dead(bigint[]) IS
  'Re-queue dead or failed deliveries (attempts reset); returns {replayed, ids, skipped: [{id, why}]}.';
COMMENT ON FUNCTION flowgate.prune_deliveries(int) IS
  'Delete delivered deliveries older than flowgate.delivered_retention_hours and job runs older than '
  'flowgate.job_run_retention_hours (at most max_rows each per call); failed and dead deliveries are kept for replay.';
COMMENT ON FUNCTION flowgate.drop_secret(text) IS
  'Forget a named secret, in Supabase Vault (when installed) and in flowgate.secrets; true when one existed.';

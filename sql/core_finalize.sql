-- flowgate core, part 2 (finalize): objects that call Rust functions, and documentation.

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

COMMENT ON FUNCTION flowgate.current_actor() IS
  'The acting identity: the JWT subject from request.jwt.claims (PostgREST/Supabase), else current_user.';
COMMENT ON FUNCTION flowgate.current_actor_info(text) IS
  'The acting identity as JSON (id, role, source, actor_type, trusted); with on_behalf_of, what a trusted '
  'session acting for that actor would be recorded as (42501 for untrusted sessions).';
COMMENT ON FUNCTION flowgate.get_setting(text) IS
  'Effective value of a setting (stored, else default); 22023 for an unknown key.';
COMMENT ON FUNCTION flowgate.set_setting(text, jsonb) IS
  'Store a setting after validating it (22023 with the allowed values otherwise); needs write access to flowgate.settings.';
COMMENT ON FUNCTION flowgate.reset_setting(text) IS
  'Forget a stored setting so its documented default applies again.';
COMMENT ON FUNCTION flowgate.check_setting(text, jsonb) IS
  'Raise 22023 unless the value is acceptable for the key; used by the settings trigger.';
COMMENT ON FUNCTION flowgate.setting_definitions() IS
  'Every documented setting: key, kind, allowed values, default, current value and description.';

-- Outbox and schedules ------------------------------------------------------------------
-- Operator functions: not for PUBLIC. (Reading deliveries is owner-only too.)
REVOKE EXECUTE ON FUNCTION flowgate.dispatch(int), flowgate.collect(), flowgate.replay_dead(bigint[]),
    flowgate.set_secret(text, text), flowgate.drop_secret(text),
    flowgate.record_attempt_isolated(bigint, int, text, text, text, text, text),
    flowgate.record_attempt_checked(bigint, int, text, text, text, text, text),
    flowgate.rerun_handlers(bigint[]),
    flowgate.record_attempt(bigint, int, text, text, text, text, text),
    flowgate.transport_native(bigint[]), flowgate.transport_pg_net(bigint[]),
    flowgate.enqueue_delivery(text, text, text, text, jsonb, text, jsonb, text, text, text, text, int, int),
    flowgate.install_schedules(), flowgate.uninstall_schedules(), flowgate.run_periodic(boolean),
    flowgate.prune_deliveries(int)
  FROM PUBLIC;

COMMENT ON FUNCTION flowgate.dispatch(int) IS
  'Claim up to max_deliveries due deliveries (SKIP LOCKED) and send them: native transport sends and records '
  'in this call; pg_net queues them for flowgate.collect(). Returns counts per outcome.';
COMMENT ON FUNCTION flowgate.collect() IS
  'Record pg_net responses of in-flight deliveries and expire in-flight deliveries past their lease.';
COMMENT ON FUNCTION flowgate.replay_dead(bigint[]) IS
  'Re-queue dead or failed deliveries (attempts reset); returns how many were re-queued.';
COMMENT ON FUNCTION flowgate.set_secret(text, text) IS
  'Store a named secret for deliveries (used when Supabase Vault has none of that name). Owner only.';
COMMENT ON FUNCTION flowgate.enqueue_delivery(text, text, text, text, jsonb, text, jsonb, text, text, text, text, int, int) IS
  'Enqueue an HTTP delivery; the same idempotency_key returns the first delivery id and writes nothing.';
COMMENT ON FUNCTION flowgate.install_schedules() IS
  'Register every periodic flowgate job with pg_cron (idempotent; schedules from settings).';
COMMENT ON FUNCTION flowgate.uninstall_schedules() IS 'Remove every flowgate job from pg_cron.';
COMMENT ON FUNCTION flowgate.prune_deliveries(int) IS
  'Delete delivered deliveries older than flowgate.delivered_retention_hours (at most max_rows per call); '
  'failed and dead deliveries are kept for replay.';
COMMENT ON FUNCTION flowgate.run_periodic(boolean) IS
  'Run the periodic jobs once (dispatch, collect, and with include_housekeeping the pruning); used by the background worker.';

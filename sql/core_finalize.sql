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

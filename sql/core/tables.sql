-- flowgate core, part 1 (bootstrap): tables and plain-SQL helpers that need no Rust function.
-- The schema `flowgate` itself is created by CREATE EXTENSION from the control file.

-- Every text flowgate reads is UTF-8 (its Rust functions take text as UTF-8 strings). In a
-- database of another encoding a non-ASCII value would fail deep inside a call, so the install
-- refuses it here, before anything is created.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = 'flowgate needs a UTF8 database',
            DETAIL = pg_catalog.format('This database''s encoding is %s.', pg_catalog.getdatabaseencoding()),
            HINT = 'Install flowgate in a database created with ENCODING ''UTF8'' (as every Supabase database is).';
    END IF;
END
$encoding$;

-- A function is callable by PUBLIC unless this script revokes it (Postgres' default, which the
-- public surface relies on: flowgate.current_actor(), which row-level security calls; the user
-- entry points). Where the installing role's default privileges revoke EXECUTE from PUBLIC
-- (Supabase's guide to securing the API suggests it), that default is lifted for the length of
-- this script and put back at its end (finalize.sql): the functions this script does not revoke
-- stay callable, and the role's defaults are as they were.
DO $defaults$
BEGIN
    -- Set either way: a value already in the session (SET, ALTER ROLE ... SET) must not make the
    -- end of the script revoke what this script did not lift.
    PERFORM pg_catalog.set_config('flowgate_install.lifted_public_execute', 'off', true);
    IF EXISTS (SELECT FROM pg_catalog.pg_default_acl d
                WHERE d.defaclrole = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
                  AND d.defaclnamespace = 0 AND d.defaclobjtype = 'f'
                  AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(d.defaclacl) a
                                   WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')) THEN
        ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
        PERFORM pg_catalog.set_config('flowgate_install.lifted_public_execute', 'on', true);
    END IF;
END
$defaults$;

COMMENT ON SCHEMA flowgate IS
  'flowgate shared core: actor identity, settings, the append-only guard and (later) the outbox';

-- Settings ---------------------------------------------------------------------------------
CREATE TABLE flowgate.settings (
    key        text PRIMARY KEY
               CHECK (key ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE flowgate.settings IS
  'Operator settings, one JSON value per documented key (see flowgate.setting_definitions()). '
  'Every write is validated by a trigger; unset keys use their documented default.';
SELECT pg_catalog.pg_extension_config_dump('flowgate.settings', '');

REVOKE ALL ON flowgate.settings FROM PUBLIC;

-- One person, one actor across surfaces: an external identity (a Slack user id) linked to the
-- actor it acts as (a JWT subject). Written only through flowgate.link_identity (trusted
-- sessions) and the redemption of a code from flowgate.request_identity_link.
CREATE TABLE flowgate.identity_links (
    provider    text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    external_id text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 256),
    actor_id    text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 256),
    linked_by   text NOT NULL,
    linked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, external_id)
);
CREATE INDEX identity_links_actor ON flowgate.identity_links (actor_id);
COMMENT ON TABLE flowgate.identity_links IS
  'External identities (provider slack: a Slack user id) and the actor each acts as. A person links '
  'their own by redeeming, as that identity, a code they asked for signed in (flowgate.request_identity_link); '
  'a trusted session links anyone''s. Verified Slack requests from a linked id act as the actor.';
SELECT pg_catalog.pg_extension_config_dump('flowgate.identity_links', '');
REVOKE ALL ON flowgate.identity_links FROM PUBLIC;

-- The one-time codes that link an external identity to the person who asked for one signed in
-- (flowgate.request_identity_link): the identity redeems it in a request its provider verified
-- (a signed Slack `/capacity link CODE`). Only a hash is kept; a code lives ten minutes and a
-- new one replaces the asker's last. Not dumped: a restored database starts with none pending.
CREATE TABLE flowgate.identity_link_codes (
    provider    text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    actor_id    text NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 256),
    code_sha256 text NOT NULL CHECK (code_sha256 ~ '^[0-9a-f]{64}$'),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, actor_id),
    UNIQUE (provider, code_sha256)
);
COMMENT ON TABLE flowgate.identity_link_codes IS
  'Pending identity links: a hash of a one-time code per asker (flowgate.request_identity_link), ten minutes, '
  'redeemed by the external identity in a request its provider verified (Slack: /capacity link CODE).';
REVOKE ALL ON flowgate.identity_link_codes FROM PUBLIC;
GRANT SELECT ON flowgate.settings TO PUBLIC;
GRANT USAGE ON SCHEMA flowgate TO PUBLIC;

-- The append-only guard --------------------------------------------------------------------
-- One trigger function for every event table: UPDATE, DELETE and TRUNCATE raise 55000.
CREATE FUNCTION flowgate.forbid_mutation() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '55000',
        MESSAGE = format('%I.%I is append-only: %s is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP),
        HINT = 'record a new event instead of changing or removing an earlier one';
END
$$;
COMMENT ON FUNCTION flowgate.forbid_mutation() IS
  'Trigger function that makes a table append-only; attach it with flowgate.make_append_only(regclass).';

CREATE FUNCTION flowgate.make_append_only(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'invalid tbl: NULL',
            HINT = 'the table to make append-only, e.g. ''my_schema.events''::regclass';
    END IF;
    -- regclass output is already quoted and schema-qualified where needed.
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'flowgate_append_only') THEN
        EXECUTE format('CREATE TRIGGER flowgate_append_only BEFORE UPDATE OR DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION flowgate.forbid_mutation()', tbl);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'flowgate_append_only_truncate') THEN
        EXECUTE format('CREATE TRIGGER flowgate_append_only_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION flowgate.forbid_mutation()', tbl);
    END IF;
END
$$;
COMMENT ON FUNCTION flowgate.make_append_only(regclass) IS
  'Attach the append-only guard (row UPDATE/DELETE and TRUNCATE raise SQLSTATE 55000) to a table; idempotent.';
REVOKE ALL ON FUNCTION flowgate.make_append_only(regclass) FROM PUBLIC;

-- Periodic jobs as flowgate ran them (pg_cron 1.4 records only "SELECT 1" for each run): the
-- latest outcome of every job, and a history of pg_cron and manual runs and of every failure.
CREATE TABLE flowgate.job_status (
    job             text PRIMARY KEY,
    runs            bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    last_runner     text,
    last_started_at timestamptz,
    last_duration_ms numeric(12, 3),
    last_status     text CHECK (last_status IN ('ok', 'error')),
    last_result     text,
    last_error      text,
    last_error_at   timestamptz
) WITH (fillfactor = 50);  -- one row per job, updated every run: room for HOT updates
COMMENT ON TABLE flowgate.job_status IS
  'The latest run of each periodic job (whoever ran it: pg_cron, the background worker, by hand) with its '
  'outcome, duration and error; runs and failures count since install.';

CREATE TABLE flowgate.job_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text NOT NULL,
    runner      text NOT NULL CHECK (runner IN ('pg_cron', 'worker', 'manual')),
    started_at  timestamptz NOT NULL,
    duration_ms numeric(12, 3) NOT NULL,
    status      text NOT NULL CHECK (status IN ('ok', 'error')),
    result      text,
    error       text
);
CREATE INDEX job_runs_job ON flowgate.job_runs (job, started_at DESC);
CREATE INDEX job_runs_started ON flowgate.job_runs (started_at);
COMMENT ON TABLE flowgate.job_runs IS
  'History of periodic job runs: every pg_cron and manual run, and every failed run of the background worker '
  '(its successful ticks only update flowgate.job_status). Kept flowgate.job_run_retention_hours.';
REVOKE ALL ON flowgate.job_status, flowgate.job_runs FROM PUBLIC;


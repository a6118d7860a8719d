-- flowgate core, part 1 (bootstrap): tables and plain-SQL helpers that need no Rust function.
-- The schema `flowgate` itself is created by CREATE EXTENSION from the control file.

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
-- actor it acts as (a JWT subject). Written only through flowgate.link_identity.
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
  'their own; a trusted session links anyone''s. Verified Slack requests from a linked id act as the actor.';
SELECT pg_catalog.pg_extension_config_dump('flowgate.identity_links', '');
REVOKE ALL ON flowgate.identity_links FROM PUBLIC;
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

-- flowgate 0.1.0 -> 0.1.1 (ALTER EXTENSION flowgate UPDATE TO '0.1.1')
\echo Use "ALTER EXTENSION flowgate UPDATE" to load this file. \quit

-- 0.1.1 refuses to be installed in a database that is not UTF8 (flowgate reads text as UTF-8).
-- An existing install there is updated, with a warning.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE WARNING USING
            MESSAGE = 'flowgate needs a UTF8 database',
            DETAIL = pg_catalog.format('This database''s encoding is %s; a non-ASCII value makes flowgate calls fail.',
                                       pg_catalog.getdatabaseencoding()),
            HINT = 'Move the data to a database created with ENCODING ''UTF8''.';
    END IF;
END
$encoding$;

-- Releases first, then the fact tables (the triggers below): the order ops.ingest_event takes
-- them in, so an ingest running during the update waits instead of deadlocking with it. Ingest
-- and direct writes of ops wait until the update commits.
LOCK TABLE ops.releases IN EXCLUSIVE MODE;

-- Every evaluation of a release now bumps its row (an update that changes nothing, for
-- REPEATABLE READ writers): room on each page keeps those updates HOT. Existing pages keep
-- their fill until rewritten.
ALTER TABLE ops.releases SET (fillfactor = 90);

-- The CHECK helpers are the envelope checks themselves, as C functions: a CHECK calls them
-- without inlining and planning a SQL body in every statement that writes the table. Same
-- rules, so every stored row still holds.
CREATE OR REPLACE FUNCTION ops.is_valid_text(value text, max_chars integer, multiline boolean) RETURNS boolean
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'is_valid_text_wrapper';
COMMENT ON FUNCTION ops.is_valid_text(text, integer, boolean) IS
  'CHECK helper: not blank, at most max_chars characters, no control characters (newlines and tabs allowed when multiline). The rule ops.ingest_event checks free text with.';
CREATE OR REPLACE FUNCTION ops.is_absolute_uri(value text) RETURNS boolean
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'is_absolute_uri_wrapper';
COMMENT ON FUNCTION ops.is_absolute_uri(text) IS
  'CHECK helper: an absolute URI (a scheme), at most 2048 bytes, no whitespace or control characters. The rule ops.ingest_event checks URIs with.';

-- A TRUNCATE of a fact table (owner only) changes the facts of every release at once: each
-- release's gates are re-evaluated, so no stored status outlives the facts it came from.
CREATE FUNCTION ops.on_facts_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ops.refresh_gates(r.release_id) FROM ops.releases r ORDER BY r.release_id;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.on_facts_truncated() FROM PUBLIC;
COMMENT ON FUNCTION ops.on_facts_truncated() IS
  'Trigger: a TRUNCATE of checks, evidence, approvals, exceptions or deployments re-evaluates every release''s gates.';
CREATE TRIGGER refresh_gates_truncate AFTER TRUNCATE ON ops.gate_checks
    FOR EACH STATEMENT EXECUTE FUNCTION ops.on_facts_truncated();
CREATE TRIGGER refresh_gates_truncate AFTER TRUNCATE ON ops.evidence_artifacts
    FOR EACH STATEMENT EXECUTE FUNCTION ops.on_facts_truncated();
CREATE TRIGGER refresh_gates_truncate AFTER TRUNCATE ON ops.approvals
    FOR EACH STATEMENT EXECUTE FUNCTION ops.on_facts_truncated();
CREATE TRIGGER refresh_gates_truncate AFTER TRUNCATE ON ops.exceptions
    FOR EACH STATEMENT EXECUTE FUNCTION ops.on_facts_truncated();
CREATE TRIGGER refresh_gates_truncate AFTER TRUNCATE ON ops.deployments
    FOR EACH STATEMENT EXECUTE FUNCTION ops.on_facts_truncated();

-- A database upgraded from 0.1.0 may already hold stale statuses from an earlier TRUNCATE. The
-- same pass rewrites every reason in 0.1.1's fixed order of check names, and without the
-- approver's id in a rejection's reason (ops.approvals keeps who): a repeated check result is not
-- evaluated again, so the stored reasons must already be what an evaluation gives. It also
-- withdraws G4 where a rollback came after the deployment that passed it (0.1.1's rule).
SELECT count(ops.refresh_gates(r.release_id)) FROM (SELECT release_id FROM ops.releases ORDER BY release_id) r;

-- A pool's rebuild locks its own queue table, no longer the inventory tables all pools share.
COMMENT ON FUNCTION intake.recover_pool(text) IS
  'Rebuild a pool''s UNLOGGED inventory, released slots, user claim counts and a missing slot sequence from its logged pgmq intents, after a crash or a restore; returns the resulting counts. Blocks the pool''s claims (not other pools'') while it runs. Owner only unless granted.';

-- The ledger RPC is for trusted backends only: a finalized row names its user, and
-- flowgate.grant_api grants intake.finalize_transaction with intake.claim.
COMMENT ON FUNCTION intake.finalize_transaction(jsonb) IS
  'The ledger RPC, for trusted backends only (superusers, members of a role in flowgate.trusted_roles such as service_role; 42501 otherwise): write one finalized row per idempotency key and return it; the same key again returns the first row as "duplicate" and writes nothing. 23505 for a key reused for another pool, resource or user, or a resource finalized under another key; 22023 for a bad payload. The drain posts here (through PostgREST) as a trusted role; signed-in users may not, since a row names its user.';

-- intake.pool_status is owner only, as documented (it was left executable by PUBLIC).
REVOKE EXECUTE ON FUNCTION intake.pool_status(text) FROM PUBLIC;

-- A delivery's secret body fields (a new project's database password) are referenced by
-- secret name and set when the request is built, as auth_secret is; they were stored in the
-- body (and so in dumps and the WAL) until the delivery ended.
ALTER TABLE flowgate.deliveries ADD COLUMN body_secrets jsonb CHECK (jsonb_typeof(body_secrets) = 'object');
COMMENT ON COLUMN flowgate.deliveries.body_secrets IS
  'Top-level body fields that are secrets, each with the name of its secret (Supabase Vault, else flowgate.secrets), set when the request is built; the stored body does not hold them.';

-- The id sequences of the metrics and the outcome log go into dumps with their tables (a
-- restored database started them at 1 again, and every sample then failed on a taken id).
SELECT pg_catalog.pg_extension_config_dump('intake.engine_metrics_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('intake.outcome_log_id_seq', '');

-- A restore loads ops.deployments by COPY, possibly before the facts that made each
-- deployment eligible: the promotion block lets a restore's COPY through (a COPY by a role row
-- security does not apply to; the gate triggers step aside too, in ops.ingest_applying), so a
-- dump restores whole, with the statuses it holds.
CREATE FUNCTION ops."restore_loading"() RETURNS bool
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'restore_loading_wrapper';
COMMENT ON FUNCTION ops.restore_loading() IS
  'Whether a restore is loading ops'' tables now (a COPY by a role row security does not apply to, as pg_restore runs): the promotion block then lets past deployments in.';
CREATE OR REPLACE FUNCTION ops.check_promotion() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verdict jsonb;
BEGIN
    IF ops.restore_loading() THEN
        RETURN NEW;
    END IF;
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

COMMENT ON FUNCTION ops.ingest_applying(uuid) IS
  'Whether ops.ingest_event in this session is applying an event to the release right now, or a restore is loading the table (a COPY by a role row security does not apply to); the gate triggers then leave the release''s evaluation to the ingest, or its stored statuses as the dump has them.';

-- auto uses pg_net only where PUBLIC can neither read its request queue nor write its
-- responses (pg_net as installed grants both).
COMMENT ON FUNCTION flowgate.effective_transport() IS
  'The transport the outbox uses now, pg_net or native: the flowgate.http_transport setting, with auto meaning pg_net when that extension is installed and PUBLIC can neither read its request queue nor write its responses, else native.';

-- A qa_signoff artifact (it alone passes G2) comes only from the personas who sign G2 off: the
-- one insert policy of ops.evidence_artifacts becomes one per persona, from the persona matrix.
-- (Whatever insert policies it has go first: 0.1.0's script run by this library made them
-- per persona already.)
DO $evidence$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT policyname FROM pg_catalog.pg_policies
              WHERE schemaname = 'ops' AND tablename = 'evidence_artifacts' AND cmd = 'INSERT' LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON ops.evidence_artifacts', s);
    END LOOP;
    FOR s IN SELECT x FROM ops.persona_privileges() x WHERE x LIKE 'CREATE POLICY %\_inserts ON ops.evidence\_artifacts %' LOOP
        EXECUTE s;
    END LOOP;
END
$evidence$;

-- The exposure rule of a fresh install (finalize.sql): PostgREST's anon and authenticated roles
-- get nothing the installing role's default privileges gave them on what this update created.
DO $exposure$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.on_facts_truncated() FROM %I', r);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.restore_loading() FROM %I', r);
        END IF;
    END LOOP;
END
$exposure$;

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

-- Where the updating role's default privileges revoke EXECUTE from PUBLIC, that default is
-- lifted for this script and put back at its end, as the install does (core tables.sql,
-- finalize.sql): the functions this update creates are callable as a fresh install's are.
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

-- Releases first, then the fact tables (the triggers below): the order ops.ingest_event takes
-- them in, so an ingest running during the update waits instead of deadlocking with it. Ingest
-- and direct writes of ops wait until the update commits.
LOCK TABLE ops.releases IN EXCLUSIVE MODE;

-- Writers of a release lock its row and then rewrite its row in ops.release_locks (an upsert
-- that changes nothing, for REPEATABLE READ writers; see sql/ops/tables.sql) instead of
-- rewriting the release's own row; the lock row goes with its release.
CREATE UNLOGGED TABLE ops.release_locks (
    release_id uuid PRIMARY KEY
);
COMMENT ON TABLE ops.release_locks IS
  'One row per release an event was applied to since the server last crashed: the row writers of the release lock in '
  'turn (ops.ingest_event, the gate triggers). Holds no data; owner only, not dumped.';
REVOKE ALL ON ops.release_locks FROM PUBLIC;
ALTER TABLE ops.release_locks ENABLE ROW LEVEL SECURITY;
CREATE FUNCTION ops.drop_release_locks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM ops.release_locks l USING deleted_releases d WHERE l.release_id = d.release_id;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.drop_release_locks() FROM PUBLIC;
COMMENT ON FUNCTION ops.drop_release_locks() IS
  'Trigger: the lock rows of deleted releases are deleted with them.';
CREATE TRIGGER drop_release_locks AFTER DELETE ON ops.releases REFERENCING OLD TABLE AS deleted_releases
    FOR EACH STATEMENT EXECUTE FUNCTION ops.drop_release_locks();

-- The ingest log's time index is a BRIN index: the log is appended in time order, and an insert
-- leaves a BRIN index untouched until its range is summarized.
DROP INDEX ops.event_ingest_log_received;
CREATE INDEX event_ingest_log_received ON ops.event_ingest_log USING brin (received_at) WITH (autosummarize = on);

-- Evidence records when it was attached by the clock (G4 counts a health_check artifact from
-- its deployment's recorded_at on): existing rows take their created_at, before any
-- re-evaluation below reads them.
ALTER TABLE ops.evidence_artifacts ADD COLUMN recorded_at timestamptz;
ALTER TABLE ops.evidence_artifacts DISABLE TRIGGER USER;
UPDATE ops.evidence_artifacts SET recorded_at = created_at;
-- A gate_signoff's qa_signoff evidence names the signing persona, not the signer: every persona
-- reads evidence, fewer read ops.approvals, which says who signed off.
UPDATE ops.evidence_artifacts e SET submitted_by = a.persona_role || ' (gate_signoff)'
  FROM ops.approvals a
 WHERE e.artifact_type = 'qa_signoff' AND e.ingest_id IS NOT NULL AND a.ingest_id = e.ingest_id;
ALTER TABLE ops.evidence_artifacts ENABLE TRIGGER USER;
ALTER TABLE ops.evidence_artifacts ALTER COLUMN recorded_at SET DEFAULT clock_timestamp(),
                                   ALTER COLUMN recorded_at SET NOT NULL;

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

-- The URLs flowgate sends to (a delivery's, a pool's webhook and commit target) hold, in every
-- writer, to the rule flowgate checks them with when it writes them itself: 0.1.0's CHECKs took
-- credentials (https://user:password@host) into the tables and their dumps. A stored URL that
-- breaks the rule loses its user:password@ part (or, still breaking it, becomes
-- https://invalid.invalid/, a name that never resolves): a delivery still to be sent fails, a
-- pool is paused until its owner names a secret for the credentials and resumes it. Only then
-- are the new constraints added (a constraint left NOT VALID would still fail every later
-- update of such a row: the outbox's claims, a pool's drain). The tables are taken in the order
-- a drain takes them (the pool's configuration, then the deliveries), so a drain running
-- during the update waits instead of deadlocking with it.
LOCK TABLE intake.engine_config IN ACCESS EXCLUSIVE MODE;
LOCK TABLE flowgate.deliveries IN ACCESS EXCLUSIVE MODE;
CREATE FUNCTION flowgate."is_endpoint_url"("value" text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'is_endpoint_url_wrapper';
COMMENT ON FUNCTION flowgate.is_endpoint_url(text) IS
  'CHECK helper: an http:// or https:// URL with a host, no user:password@ in it, at most 2048 bytes, no whitespace or control characters. The rule every URL flowgate sends to is checked with, so direct writes of flowgate.deliveries and intake.engine_config hold to it too.';
DO $$
DECLARE
    -- A URL's user:password@ part, and what a URL still breaking the rule without it becomes.
    userinfo constant text := '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@';
    nowhere constant text := 'https://invalid.invalid/';
    failed bigint;
    kept bigint;
    pools text;
BEGIN
    WITH bad AS (
        UPDATE flowgate.deliveries
           SET url = (SELECT CASE WHEN flowgate.is_endpoint_url(u) THEN u ELSE nowhere END
                  FROM pg_catalog.regexp_replace(url, userinfo, '\1') u),
               status = CASE WHEN status IN ('pending', 'in_flight') THEN 'failed'::flowgate.delivery_status ELSE status END,
               last_error = CASE WHEN status IN ('pending', 'in_flight')
                                 THEN 'flowgate 0.1.1: its URL carried credentials or broke the URL rule; enqueue it again with a secret for the credentials'
                                 ELSE last_error END
         WHERE NOT flowgate.is_endpoint_url(url)
        RETURNING status, last_error)
    SELECT count(*) FILTER (WHERE last_error LIKE 'flowgate 0.1.1:%'), count(*) INTO failed, kept FROM bad;
    IF kept > 0 THEN
        RAISE WARNING '% deliveries had URLs that carried credentials or broke the URL rule: the credentials were removed, % not yet sent failed', kept, failed
            USING HINT = 'enqueue them again with auth_secret naming a secret (flowgate.set_secret) for the credentials';
    END IF;
    WITH bad AS (
        UPDATE intake.engine_config
           SET validation_webhook_url = CASE WHEN flowgate.is_endpoint_url(validation_webhook_url) IS FALSE
                                             THEN (SELECT CASE WHEN flowgate.is_endpoint_url(u) THEN u ELSE nowhere END
                  FROM pg_catalog.regexp_replace(validation_webhook_url, userinfo, '\1') u) ELSE validation_webhook_url END,
               commit_target = CASE WHEN flowgate.is_endpoint_url(commit_target) IS FALSE
                                    THEN (SELECT CASE WHEN flowgate.is_endpoint_url(u) THEN u ELSE nowhere END
                  FROM pg_catalog.regexp_replace(commit_target, userinfo, '\1') u) ELSE commit_target END,
               paused = true, updated_at = now()
         WHERE flowgate.is_endpoint_url(validation_webhook_url) IS FALSE OR flowgate.is_endpoint_url(commit_target) IS FALSE
        RETURNING pool_id)
    SELECT pg_catalog.string_agg(pool_id, ', ' ORDER BY pool_id) INTO pools FROM bad;
    IF pools IS NOT NULL THEN
        RAISE WARNING 'pools paused: %: a webhook URL or commit target carried credentials or broke the URL rule (the credentials were removed)', pools
            USING HINT = 'name a secret for the credentials (validation_auth_secret, commit_auth_secret), check the URLs, then UPDATE intake.engine_config SET paused = false';
    END IF;
END
$$;
ALTER TABLE flowgate.deliveries
    DROP CONSTRAINT deliveries_url_check,
    ADD CONSTRAINT deliveries_url_check CHECK (flowgate.is_endpoint_url(url));
ALTER TABLE intake.engine_config
    DROP CONSTRAINT engine_config_validation_webhook_url_check,
    DROP CONSTRAINT engine_config_commit_target_check,
    ADD CONSTRAINT engine_config_validation_webhook_url_check CHECK (flowgate.is_endpoint_url(validation_webhook_url)),
    ADD CONSTRAINT engine_config_commit_target_check CHECK (flowgate.is_endpoint_url(commit_target));

-- A delivery's secret body fields (a new project's database password) are referenced by
-- secret name and set when the request is built, as auth_secret is; they were stored in the
-- body (and so in dumps and the WAL) until the delivery ended.
ALTER TABLE flowgate.deliveries ADD COLUMN body_secrets jsonb CHECK (jsonb_typeof(body_secrets) = 'object');
COMMENT ON COLUMN flowgate.deliveries.body_secrets IS
  'Top-level body fields that are secrets, each with the name of its secret (Supabase Vault, else flowgate.secrets), set when the request is built; the stored body does not hold them.';

-- A default requirement deleted and written again by the operator was no longer marked a
-- default: dumped, it collided on restore with the one CREATE EXTENSION makes, and the COPY of
-- the table failed whole. Whether a row is a default is now a property of its pair.
CREATE FUNCTION ops.mark_default_requirement() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.is_default := (NEW.environment, NEW.gate_code) IN (('staging', 'G1'), ('staging', 'G2'),
        ('production', 'G1'), ('production', 'G2'), ('production', 'G3'), ('production', 'G4'));
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.mark_default_requirement() FROM PUBLIC;
COMMENT ON FUNCTION ops.mark_default_requirement() IS
  'Trigger: marks a gate requirement a default (is_default) exactly when its pair is one of the six CREATE EXTENSION makes, however the row was written.';
CREATE TRIGGER mark_default BEFORE INSERT OR UPDATE ON ops.environment_gate_requirements
    FOR EACH ROW EXECUTE FUNCTION ops.mark_default_requirement();
UPDATE ops.environment_gate_requirements SET is_default = is_default;

-- The jobs pg_cron runs (as the extension's owner) resolve their names in pg_catalog, not in
-- the database's default search_path, which the database owner sets.
ALTER FUNCTION flowgate.run_job(text, text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION flowgate.run_periodic(boolean) SET search_path TO pg_catalog, pg_temp;

-- pg_net numbers its requests with the sequence of an UNLOGGED table, which a crash, an
-- immediate shutdown, a restore from a base backup or a promoted standby resets to 1 along with
-- pg_net's queue and responses: a delivery in flight then could be recorded with the response
-- to a later request that got its id. A delivery now keeps the pg_net epoch its request id
-- belongs to (flowgate.pg_net_epoch, UNLOGGED, reset with pg_net's tables); one of an earlier
-- epoch is a lost attempt, retried with the same key. Deliveries in flight on pg_net now
-- have no epoch: the first collect counts them lost and they are sent again with their key
-- (which of them pg_net had sent cannot be told).
ALTER TABLE flowgate.deliveries ADD COLUMN transport_epoch uuid;
COMMENT ON COLUMN flowgate.deliveries.transport_epoch IS
  'The epoch its attempt was handed out in: on pg_net the pg_net epoch (flowgate.pg_net_epoch) its transport_ref belongs to (a response is this delivery''s only in the same epoch); natively the server run (flowgate.server_run) that sends it.';
CREATE UNLOGGED TABLE flowgate.pg_net_epoch (
    epoch     uuid NOT NULL,
    -- The pg_net the epoch was begun for (its response table): one dropped and created again
    -- numbers from 1 too, and is another epoch.
    net_relid oid NOT NULL,
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE flowgate.pg_net_epoch IS
  'The current pg_net epoch: begun by the first delivery queued on pg_net since pg_net''s unlogged tables (and this one) were last reset, or pg_net was created again. '
  'A pg_net response is a delivery''s only when the delivery''s transport_epoch is this epoch; in-flight deliveries of an earlier epoch count as lost attempts, retried with the same key.';
REVOKE ALL ON flowgate.pg_net_epoch FROM PUBLIC;

-- A native request is sent by a backend of this server; one in flight when the server restarted
-- (a crash, a killed backend: Postgres reinitializes every session; an immediate or a clean
-- shutdown) has lost its sender. This UNLOGGED row names the server's run: a crash empties it,
-- and a restart makes it stale (it keeps the postmaster start time it was begun under, compared
-- for equality, never ordered: a clock stepped back does not move a run). A delivery claimed
-- natively keeps the run in transport_epoch; one of another run is a lost attempt at the next
-- collect, retried with its key. Not in dumps. Owner-only.
CREATE UNLOGGED TABLE flowgate.server_run (
    run      uuid NOT NULL,
    started  timestamptz NOT NULL,
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE flowgate.server_run IS
  'The current run of this server: begun by the first native claim since the server started or crashed (the row is UNLOGGED, and keeps the postmaster start time it was begun under). '
  'A native delivery in flight whose transport_epoch is an earlier run lost its sender: it counts as a lost attempt, retried with the same key.';
REVOKE ALL ON flowgate.server_run FROM PUBLIC;

-- The id sequences of the metrics and the outcome log go into dumps with their tables (a
-- restored database started them at 1 again, and every sample then failed on a taken id).
SELECT pg_catalog.pg_extension_config_dump('intake.engine_metrics_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('intake.outcome_log_id_seq', '');
-- A 0.1.0 dump carried neither: restored (into 0.1.0, as the README says) and then updated,
-- both started at 1 under the restored rows, and every sample or outcome collided with one.
-- Each goes on after its table's highest id (never back).
SELECT pg_catalog.setval('intake.engine_metrics_id_seq', x.m)
  FROM (SELECT max(id) AS m FROM intake.engine_metrics) x, intake.engine_metrics_id_seq s
 WHERE x.m > CASE WHEN s.is_called THEN s.last_value ELSE 0 END;
SELECT pg_catalog.setval('intake.outcome_log_id_seq', x.m)
  FROM (SELECT max(id) AS m FROM intake.outcome_log) x, intake.outcome_log_id_seq s
 WHERE x.m > CASE WHEN s.is_called THEN s.last_value ELSE 0 END;

-- A writer of a release takes its turn as ops.ingest_event does (store::lock_release_row): the
-- release's row locked FOR NO KEY UPDATE, then its row in ops.release_locks rewritten, so a
-- REPEATABLE READ transaction whose snapshot missed an earlier writer fails with 40001. False
-- when the release does not exist. For the triggers (owner only; from 0.1.1).
CREATE FUNCTION ops.take_release_turn(release uuid) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM ops.releases r WHERE r.release_id = release FOR NO KEY UPDATE OF r;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO ops.release_locks AS l (release_id) VALUES (release)
        ON CONFLICT (release_id) DO UPDATE SET release_id = EXCLUDED.release_id;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.take_release_turn(uuid) FROM PUBLIC;
COMMENT ON FUNCTION ops.take_release_turn(uuid) IS
  'A writer of a release takes its turn as ops.ingest_event does (row lock, then the lock row rewritten); false when it does not exist.';

-- A restore loads ops.deployments by COPY, possibly before the facts that made each
-- deployment eligible: the promotion block lets a restore's COPY through (a COPY by a role row
-- security does not apply to; the gate triggers step aside too, in ops.ingest_applying), so a
-- dump restores whole, with the statuses it holds.
CREATE FUNCTION ops."restore_loading"() RETURNS bool
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'restore_loading_wrapper';
COMMENT ON FUNCTION ops.restore_loading() IS
  'Whether a restore is loading ops.deployments now (a COPY into it by a role row security does not apply to, as pg_restore runs): the promotion block then lets past deployments in.';
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
    IF TG_OP = 'UPDATE' AND NEW.environment = OLD.environment AND NEW.release_id = OLD.release_id THEN
        RETURN NEW;
    END IF;
    -- Writers of a release take turns, as ops.ingest_event does, before its statuses are read:
    -- the statement after the wait reads what the lock's previous holder committed (a revoked
    -- exception, a failed check), not the snapshot from before it.
    PERFORM ops.take_release_turn(NEW.release_id);
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
-- It also guards a deployment moved to another environment or release, and takes the release's
-- lock before it reads the statuses, as ingest does.
DROP TRIGGER promotion_block ON ops.deployments;
CREATE TRIGGER promotion_block BEFORE INSERT OR UPDATE OF environment, release_id ON ops.deployments
    FOR EACH ROW EXECUTE FUNCTION ops.check_promotion();

COMMENT ON FUNCTION ops.ingest_applying(uuid) IS
  'Whether ops.ingest_event in this session is applying an event to the release right now, or a restore is loading the table (a COPY by a role row security does not apply to); the gate triggers then leave the release''s evaluation to the ingest, or its stored statuses as the dump has them.';

-- auto uses pg_net only where no other role can read it or tamper with it, the caller may use
-- it, and a pg_net worker serves this database (pg_net as installed grants PUBLIC everything).
COMMENT ON FUNCTION flowgate.effective_transport() IS
  'The transport the outbox uses now, pg_net or native: the flowgate.http_transport setting, with auto meaning pg_net where that extension is installed, closed to other roles, usable by the caller and served by a pg_net worker in this database, else native.';


-- Exceptions: a revocation is recorded beside the approval it withdraws (0.1.0 wrote the revoker
-- over the approver). A revoked row of 0.1.0 names its revoker as its decider: that becomes its
-- revocation (the approval it withdrew was not kept).
ALTER TABLE ops.exceptions
    ADD COLUMN revoked_by text,
    ADD COLUMN revoked_at timestamptz,
    ADD COLUMN revoke_comment text CHECK (ops.is_valid_text(revoke_comment, 4000, true));
UPDATE ops.exceptions SET revoked_by = decided_by, revoked_at = decided_at, revoke_comment = decision_comment
 WHERE status = 'revoked';
-- Where the approval came through ops.ingest_event, its accepted envelope still says who approved,
-- when and why: the approval is restored from it (0.1.0's trigger would refuse the change).
ALTER TABLE ops.exceptions DISABLE TRIGGER ingest_rules;
UPDATE ops.exceptions x
   SET decided_by = l.received_by, decided_at = l.received_at, decision_comment = l.envelope ->> 'comment'
  FROM ops.event_ingest_log l
 WHERE x.status = 'revoked' AND l.processing_status = 'accepted' AND l.event_type = 'exception_decided'
   AND l.release_id = x.release_id AND l.envelope ->> 'exception_id' = x.exception_id::text
   AND l.envelope ->> 'decision' = 'approved' AND l.received_by <> x.requested_by;
ALTER TABLE ops.exceptions ENABLE TRIGGER ingest_rules;
ALTER TABLE ops.exceptions ADD CONSTRAINT exception_revocation_recorded CHECK (CASE WHEN status = 'revoked'
        THEN revoked_by IS NOT NULL AND revoked_at IS NOT NULL AND revoked_by <> requested_by
        ELSE revoked_by IS NULL AND revoked_at IS NULL AND revoke_comment IS NULL END);
COMMENT ON TABLE ops.exceptions IS
  'Gate bypasses. A gate counts as bypassed only while its exception is approved and expires_at is in the future '
  '(every exception expires: expires_at is required, at most 90 days after the request). The requester cannot decide their own exception. '
  'A revoked exception keeps its approval (decided_by, decided_at, decision_comment) beside its revocation (revoked_by, revoked_at, revoke_comment).';
-- A report through ops.ingest_event that repeats its check's latest result adds no check row
-- (from 0.1.1): the table holds results as they change.
COMMENT ON TABLE ops.gate_checks IS
  'Check results as they change; the latest per (gate, check_name) counts. A report through ops.ingest_event that '
  'repeats its check''s latest result (same status and required flag, no evidence) adds no row: its accepted row in '
  'ops.event_ingest_log is the report (ops.v_check_reports lists every report), and its answer names the row that '
  'holds the result.';
-- A check result written directly (by a persona) takes its release's turn before the row exists
-- (from 0.1.1),
-- as ops.ingest_event does, and is dated when it got the turn: results of one check are then
-- ordered as they were recorded, whoever wrote them. (ops.ingest_event keeps a report that
-- repeats its check's latest result in its log alone; a row dated at its transaction's start
-- could otherwise outrank reports made after that.) A time outside the writing transaction is
-- left for ops.check_direct_insert to refuse.
CREATE FUNCTION ops.take_turn_for_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ops.take_release_turn(NEW.release_id);
    IF NEW.recorded_at >= now() AND NEW.recorded_at <= clock_timestamp() THEN
        NEW.recorded_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.take_turn_for_check() FROM PUBLIC;
COMMENT ON FUNCTION ops.take_turn_for_check() IS
  'Trigger: a check result a persona writes directly takes its release''s turn first and is dated when it got it.';
CREATE TRIGGER take_turn BEFORE INSERT ON ops.gate_checks FOR EACH ROW
    WHEN (pg_catalog.row_security_active('ops.gate_checks'::regclass)) EXECUTE FUNCTION ops.take_turn_for_check();

-- Evidence attached to a gate or check belongs to that gate's release (filled in when omitted,
-- refused when contradicted), and a check it names is of the gate it names (from 0.1.1).
CREATE OR REPLACE FUNCTION ops.evidence_release() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner uuid;
    check_gate uuid;
BEGIN
    IF NEW.check_id IS NOT NULL THEN
        SELECT c.release_id, c.gate_id INTO owner, check_gate FROM ops.gate_checks c WHERE c.check_id = NEW.check_id;
        IF NEW.gate_id IS NOT NULL AND check_gate IS DISTINCT FROM NEW.gate_id THEN
            RAISE EXCEPTION USING ERRCODE = '23514',
                MESSAGE = format('check %s of this artifact is not a check of gate %s', NEW.check_id, NEW.gate_id),
                HINT = 'omit gate_id (the check''s gate counts), or name the check''s own gate';
        END IF;
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
CREATE OR REPLACE FUNCTION ops.stamp_transition() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF row_security_active(TG_RELID) THEN
        -- An anonymous writer (a JWT without a subject: every holder would be the same actor) writes
        -- nothing in its name, as ops.ingest_event refuses it.
        IF flowgate.actor_is_anonymous() THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('an anonymous caller may not write ops.%s', TG_TABLE_NAME),
                DETAIL = 'the session''s JWT names no subject: every such caller would be the same actor',
                HINT = 'sign in (a JWT with a sub claim), or write from a trusted session';
        END IF;
    END IF;
    IF TG_TABLE_NAME = 'exceptions' THEN
        IF OLD.status = 'requested' AND NEW.status IN ('approved', 'rejected')
           AND NEW.decided_at IS NOT DISTINCT FROM OLD.decided_at THEN
            NEW.decided_at := now();
        END IF;
        IF OLD.status <> 'revoked' AND NEW.status = 'revoked' AND NEW.revoked_at IS NOT DISTINCT FROM OLD.revoked_at THEN
            NEW.revoked_at := now();
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
CREATE OR REPLACE FUNCTION ops.exception_rules() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF row_security_active(TG_RELID) AND NEW.expires_at <= clock_timestamp() THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('exception %s would expire at %s, which is not in the future', NEW.exception_id, NEW.expires_at),
                DETAIL = format('an exception is requested at %s', clock_timestamp()),
                HINT = 'expires_at after now and at most 90 days ahead';
        END IF;
        -- 90 days of 24 hours exactly (the CHECK allows two more, for rows 0.1.0 wrote).
        IF row_security_active(TG_RELID) AND NEW.expires_at > NEW.created_at + interval '2160 hours' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('exception %s would expire at %s, more than 90 days after it is requested', NEW.exception_id, NEW.expires_at),
                DETAIL = format('it is requested at %s', NEW.created_at),
                HINT = 'expires_at after now and at most 90 days (2160 hours) ahead';
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
        IF NEW.status = 'approved' AND NEW.expires_at <= clock_timestamp() THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('exception %s has already expired', OLD.exception_id),
                DETAIL = format('it expired at %s', NEW.expires_at),
                HINT = 'reject it and request a new exception';
        END IF;
        IF NEW.status = 'revoked' THEN
            IF (NEW.decided_by, NEW.decided_at, NEW.decision_comment)
               IS DISTINCT FROM (OLD.decided_by, OLD.decided_at, OLD.decision_comment) THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('the approval of exception %s stays as recorded when it is revoked', OLD.exception_id),
                    DETAIL = format('it was approved by %s at %s', OLD.decided_by, OLD.decided_at),
                    HINT = 'revoke with status, revoked_by and revoke_comment; decided_by, decided_at and decision_comment keep the approval';
            END IF;
            IF row_security_active(TG_RELID) AND (NEW.revoked_at < now() OR NEW.revoked_at > clock_timestamp()) THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('revoked_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                    DETAIL = format('revoked_at is %s; this transaction started at %s', NEW.revoked_at, now()),
                    HINT = 'omit revoked_at: the database records it';
            END IF;
        ELSIF row_security_active(TG_RELID) AND (NEW.decided_at < now() OR NEW.decided_at > clock_timestamp()) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('decided_at written directly to ops.%s must be the time of the write', TG_TABLE_NAME),
                DETAIL = format('decided_at is %s; this transaction started at %s', NEW.decided_at, now()),
                HINT = 'omit decided_at: the database records it';
        END IF;
    ELSIF (NEW.decided_by, NEW.decided_at, NEW.decision_comment, NEW.revoked_by, NEW.revoked_at, NEW.revoke_comment)
          IS DISTINCT FROM (OLD.decided_by, OLD.decided_at, OLD.decision_comment, OLD.revoked_by, OLD.revoked_at, OLD.revoke_comment) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('the decision on exception %s cannot be changed', OLD.exception_id),
            DETAIL = format('it is %s; a decision and a revocation are recorded only with the status they make', OLD.status),
            HINT = 'a requested exception may be approved or rejected, an approved one revoked; rejected and revoked ones are final';
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE VIEW ops.v_exception_status WITH (security_invoker = true) AS
SELECT x.exception_id, x.release_id, r.version, g.gate_code, x.status,
       CASE WHEN x.status = 'requested' AND x.expires_at > clock_timestamp() THEN 'pending_review'
            WHEN x.status IN ('requested', 'approved') AND x.expires_at <= clock_timestamp() THEN 'expired'
            WHEN x.status = 'approved' THEN 'active'
            ELSE x.status END AS effective_status,
       x.reason, x.requested_by, x.decided_by, x.decided_at, x.decision_comment, x.expires_at,
       greatest(x.expires_at - clock_timestamp(), interval '0') AS time_remaining, x.created_at,
       x.revoked_by, x.revoked_at, x.revoke_comment
  FROM ops.exceptions x
  JOIN ops.release_gates g ON g.gate_id = x.gate_id
  JOIN ops.releases r ON r.release_id = x.release_id;
-- Every accepted check report with its run: what ops.gate_checks held per report until a report
-- that repeats its check's latest result stopped adding a row there (0.1.1). Not
-- security_invoker: it runs as its owner, so a persona reads every report's check fields (all six
-- read every check result) and nothing else of the ingest log, whose row-level security keeps
-- the envelopes (their metadata and evidence) and every other event to their readers. A security
-- barrier: a reader's own conditions (a cast that fails, a function that prints its argument)
-- see only rows the view's condition let through.
CREATE VIEW ops.v_check_reports WITH (security_barrier = true) AS
SELECT l.ingest_id, l.release_id,
       coalesce(l.envelope ->> 'gate_code', 'G1') AS gate_code,
       coalesce(l.envelope ->> 'check_name', 'build') AS check_name,
       l.envelope ->> 'status' AS status,
       coalesce((l.envelope ->> 'required')::boolean, true) AS required,
       l.envelope ->> 'run_id' AS run_id,
       l.envelope ->> 'details_url' AS details_url,
       l.received_by AS reported_by, l.source_system, l.received_at,
       (l.result #>> '{detail,check_id}')::uuid AS check_id,
       coalesce((l.result #>> '{detail,repeated}')::boolean, false) AS repeated
  FROM ops.event_ingest_log l
 WHERE l.processing_status = 'accepted' AND l.event_type IN ('check_result', 'build_complete');
COMMENT ON VIEW ops.v_check_reports IS
  'Every accepted check report (check_result, build_complete) with its run_id and details_url; check_id is the '
  'ops.gate_checks row that holds its result, repeated whether it repeated that result (and so added no row).';

DO $check_reports$
BEGIN
    GRANT SELECT ON ops.v_check_reports TO ci_service_role, release_manager, qa_tester, sre, developer, audit_reader;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON ops.v_check_reports TO service_role;
    END IF;
END
$check_reports$;
-- The statements of the persona matrix now follow the columns the tables have (an earlier
-- version's script run with this library gets that version's grants and policies), so they are
-- no longer immutable.
ALTER FUNCTION ops.persona_privileges() STABLE;
-- The policies 0.1.1's persona matrix changed, made again from it: a qa_signoff artifact (it
-- alone passes G2) only from the personas who sign G2 off (one insert policy per persona on
-- ops.evidence_artifacts); revocations in one's own name, the approval left as it was (the
-- update policy of ops.exceptions and its column grant); a release manager reads the ingest
-- log's approval and signoff envelopes only for the releases they created and their own, as in
-- ops.approvals (its read policies). Whatever policies a table has for that command go first
-- (0.1.0's script run by this library may have made some of the new ones already).
DO $matrix$
DECLARE
    p record;
    s text;
BEGIN
    FOR p IN SELECT * FROM (VALUES ('evidence_artifacts', 'INSERT'), ('exceptions', 'UPDATE'),
                                   ('event_ingest_log', 'SELECT')) v(tbl, cmd) LOOP
        FOR s IN SELECT policyname FROM pg_catalog.pg_policies
                  WHERE schemaname = 'ops' AND tablename = p.tbl AND cmd = p.cmd LOOP
            EXECUTE pg_catalog.format('DROP POLICY %I ON ops.%I', s, p.tbl);
        END LOOP;
        FOR s IN SELECT x FROM ops.persona_privileges() x
                  WHERE x LIKE 'CREATE POLICY % ON ops.' || p.tbl || ' FOR ' || p.cmd || ' %'
                     OR (p.cmd = 'UPDATE' AND x LIKE 'GRANT UPDATE (%) ON ops.' || p.tbl || ' %') LOOP
            EXECUTE s;
        END LOOP;
    END LOOP;
END
$matrix$;


-- A persona's direct insert into ops.environment_events names its columns, never event_id: with
-- the whole table granted, OVERRIDING SYSTEM VALUE took the identity's future values and every
-- later ingest that writes the timeline failed on the key.
DO $timeline$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT x FROM ops.persona_privileges() x WHERE x LIKE 'GRANT INSERT (%) ON ops.environment_events TO %' LOOP
        EXECUTE 'REVOKE INSERT ON ops.environment_events FROM ' || pg_catalog.split_part(s, ' TO ', 2);
        EXECUTE s;
    END LOOP;
END
$timeline$;

-- A persona's direct write of a deployment, an incident or a recovery drill has the effects
-- ops.ingest_event gives the same move: the environment's timeline entry (deployment_started,
-- deployment_succeeded | deployment_failed, rollback, health_check, incident_opened,
-- incident_resolved, recovery_drill, recorded by the writer) and, for a deployment that
-- succeeds or is rolled back, the release's status (in_staging | in_production, rolled_back).
-- Only for writers row security applies to (ingest and restores write as the owner, and make
-- these entries themselves or have them in the dump). SECURITY DEFINER: a persona writes
-- neither the timeline nor the release's status directly. The triggers are named to fire
-- after the rule triggers (AFTER triggers fire in name order): a refused move takes no lock.
CREATE FUNCTION ops.direct_effects() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    actor text := flowgate.current_actor();
    kind text;
    detail jsonb := '{}';
BEGIN
    IF TG_TABLE_NAME = 'deployments' THEN
        IF TG_OP = 'INSERT' THEN
            kind := 'deployment_started';
        ELSIF OLD.status = 'started' AND NEW.status IN ('succeeded', 'failed') THEN
            kind := 'deployment_' || NEW.status;
            IF NEW.status = 'succeeded' THEN
                UPDATE ops.releases SET updated_at = now(), status = CASE
                           WHEN NEW.environment = 'production' THEN 'in_production'
                           WHEN NEW.environment = 'staging' AND status = 'open' THEN 'in_staging' ELSE status END
                 WHERE release_id = NEW.release_id;
            END IF;
        ELSIF OLD.status <> 'rolled_back' AND NEW.status = 'rolled_back' THEN
            kind := 'rollback';
            detail := jsonb_build_object('reason', NEW.rollback_reason);
            UPDATE ops.releases SET status = 'rolled_back', updated_at = now() WHERE release_id = NEW.release_id;
        ELSIF OLD.g4_status IS DISTINCT FROM NEW.g4_status THEN
            kind := 'health_check';
            detail := jsonb_build_object('g4_status', NEW.g4_status);
        END IF;
        IF kind IS NOT NULL THEN
            INSERT INTO ops.environment_events (environment, event_kind, release_id, deployment_id, detail, recorded_by)
            VALUES (NEW.environment, kind, NEW.release_id, NEW.deployment_id, detail, actor);
        END IF;
    ELSIF TG_TABLE_NAME = 'incidents' THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO ops.environment_events (environment, event_kind, release_id, deployment_id, detail, recorded_by)
            VALUES (NEW.environment, 'incident_opened', NEW.release_id, NEW.deployment_id,
                    jsonb_build_object('incident_id', NEW.incident_id, 'severity', NEW.severity), actor);
        ELSIF OLD.status = 'open' AND NEW.status = 'resolved' THEN
            INSERT INTO ops.environment_events (environment, event_kind, release_id, detail, recorded_by)
            VALUES (NEW.environment, 'incident_resolved', NEW.release_id, jsonb_build_object('incident_id', NEW.incident_id), actor);
        END IF;
    ELSIF TG_TABLE_NAME = 'recovery_drills' THEN
        INSERT INTO ops.environment_events (environment, event_kind, release_id, detail, recorded_by)
        VALUES (NEW.environment, 'recovery_drill', NEW.release_id,
                jsonb_build_object('drill_id', NEW.drill_id, 'drill_type', NEW.drill_type, 'outcome', NEW.outcome), actor);
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION ops.direct_effects() FROM PUBLIC;
COMMENT ON FUNCTION ops.direct_effects() IS
  'Trigger: a persona''s direct write of a deployment, incident or recovery drill gets what ops.ingest_event gives the same move: its environment timeline entry and, for a deployment that succeeds or is rolled back, the release''s status.';
CREATE TRIGGER timeline_effects AFTER INSERT OR UPDATE ON ops.deployments FOR EACH ROW
    WHEN (pg_catalog.row_security_active('ops.deployments'::regclass)) EXECUTE FUNCTION ops.direct_effects();
CREATE TRIGGER timeline_effects AFTER INSERT OR UPDATE ON ops.incidents FOR EACH ROW
    WHEN (pg_catalog.row_security_active('ops.incidents'::regclass)) EXECUTE FUNCTION ops.direct_effects();
CREATE TRIGGER timeline_effects AFTER INSERT ON ops.recovery_drills FOR EACH ROW
    WHEN (pg_catalog.row_security_active('ops.recovery_drills'::regclass)) EXECUTE FUNCTION ops.direct_effects();

-- Expiry is judged by the clock when an evaluation or a read runs (clock_timestamp(), the view
-- included), not by the transaction's or the statement's start: a transaction that began before
-- an exception expired cannot promote on it after.
CREATE OR REPLACE VIEW ops.v_promotion_eligibility WITH (security_invoker = true) AS
WITH stored AS (
    SELECT g.release_id, e.environment,
           count(*) = 4 AS complete, min(g.bypass_expires_at) AS first_expiry,
           coalesce(bool_and(g.status IN ('passed', 'bypassed')) FILTER (WHERE q.gate_code IS NOT NULL), true) AS eligible,
           coalesce(array_agg(g.gate_code || ' ' || g.status || ': ' || coalesce(g.status_reason, '') ORDER BY g.gate_code)
                    FILTER (WHERE q.gate_code IS NOT NULL AND g.status NOT IN ('passed', 'bypassed')), '{}') AS blocking
      FROM ops.release_gates g
     CROSS JOIN (SELECT DISTINCT environment FROM ops.environment_gate_requirements) e
      LEFT JOIN ops.environment_gate_requirements q ON q.environment = e.environment AND q.gate_code = g.gate_code
     GROUP BY g.release_id, e.environment)
-- CASE, not a lateral join: only a release whose stored statuses are not exact now pays for a
-- fresh evaluation (a lateral join's condition is checked after its function ran).
-- The stored statuses are exact unless a bypass has expired by the clock: compared out here, so
-- the clock (volatile) keeps the aggregate above inlined into one plan.
SELECT r.release_id, r.version, r.status AS release_status, s.environment,
       CASE WHEN s.complete AND NOT coalesce(s.first_expiry <= clock_timestamp(), false) THEN s.eligible
            ELSE (ops.promotion_status(r.release_id, s.environment)->>'eligible')::boolean END AS eligible,
       CASE WHEN s.complete AND NOT coalesce(s.first_expiry <= clock_timestamp(), false) THEN s.blocking
            ELSE ARRAY(SELECT jsonb_array_elements_text(ops.promotion_status(r.release_id, s.environment)->'blocking')) END AS blocking
  FROM ops.releases r
  JOIN stored s ON s.release_id = r.release_id;


-- A pool's pgmq queue tables and sequences are flowgate's own state: whatever the creating
-- role's default privileges (or pgmq) granted on them is taken back, as intake.create_pool now
-- does (whoever could read or write them would read every user's claim intents, forge or
-- delete them).
DO $queues$
DECLARE
    s text;
BEGIN
    FOR s IN
        SELECT pg_catalog.format('REVOKE ALL ON %s %s FROM %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                                 c.oid::regclass, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END)
          FROM intake.engine_config p
          CROSS JOIN LATERAL unnest(ARRAY['q_intake_' || p.pool_id, 'a_intake_' || p.pool_id, 'q_intake_' || p.pool_id || '_msg_id_seq',
                                          'q_intake_' || p.pool_id || '_dlq', 'a_intake_' || p.pool_id || '_dlq',
                                          'q_intake_' || p.pool_id || '_dlq_msg_id_seq']) n
          JOIN pg_catalog.pg_class c ON c.relname = n AND c.relnamespace = 'pgmq'::regnamespace
          CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE a.grantee <> c.relowner
    LOOP
        EXECUTE s;
    END LOOP;
END
$queues$;

-- The highest message id each dropped pool used: a pool made again under that id numbers its
-- intents after it, since their ledger keys and requests carry the pool id and message id (also
-- once the dropped pool's deliveries were pruned, or its ledger is another database's).
CREATE TABLE intake.retired_pools (
    pool_id     text PRIMARY KEY CHECK (pool_id ~ '^[a-z][a-z0-9_]{0,39}$'),
    last_msg_id bigint NOT NULL CHECK (last_msg_id >= 0),
    dropped_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE intake.retired_pools IS
  'The highest message id of each dropped pool, written by intake.drop_pool: a pool created again under its id numbers its intents after it.';
SELECT pg_catalog.pg_extension_config_dump('intake.retired_pools', '');
REVOKE ALL ON intake.retired_pools FROM PUBLIC;

-- A pool's id and inventory are fixed when it is made (sql/intake/tables.sql): a direct UPDATE
-- of either broke its claims (slots with no row, or sales past the inventory).
CREATE FUNCTION intake.fixed_pool_shape() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.pool_id IS DISTINCT FROM OLD.pool_id OR NEW.inventory IS DISTINCT FROM OLD.inventory THEN
        RAISE EXCEPTION 'pool % keeps the id and inventory it was created with', OLD.pool_id
            USING ERRCODE = '55000',
                  HINT = 'for more (or fewer) items, create another pool with intake.create_pool and pause or drop this one';
    END IF;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION intake.fixed_pool_shape() FROM PUBLIC;
COMMENT ON FUNCTION intake.fixed_pool_shape() IS
  'Trigger on intake.engine_config: a pool keeps the id and inventory it was created with (55000); its other settings are read live.';
CREATE TRIGGER fixed_pool_shape BEFORE UPDATE OF pool_id, inventory ON intake.engine_config
    FOR EACH ROW EXECUTE FUNCTION intake.fixed_pool_shape();

-- A NULL where a value is required is 22023, not a NULL answer (PostgREST answered 200 null).
ALTER FUNCTION intake.claim(text) CALLED ON NULL INPUT;
ALTER FUNCTION capacity.get_capacity_request(text, integer) CALLED ON NULL INPUT;
ALTER FUNCTION capacity.my_standing(text) CALLED ON NULL INPUT;
ALTER FUNCTION capacity.handle_slack_command(text, text, text) CALLED ON NULL INPUT;
ALTER FUNCTION capacity.handle_slack_action(text, text, text) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.unlink_identity(text, text) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.get_setting(text) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.set_setting(text, jsonb) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.reset_setting(text) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.set_secret(text, text) CALLED ON NULL INPUT;
ALTER FUNCTION flowgate.rerun_handlers(bigint[]) CALLED ON NULL INPUT;

-- Settings whose keys end in _ids (capacity.slack_team_ids) are hidden like those ending in _id,
-- and flowgate.flow_limits (its keys name destination hosts, Slack channels and tenants).
DROP POLICY public_keys ON flowgate.settings;
CREATE POLICY public_keys ON flowgate.settings FOR SELECT
    USING (key !~ '(_url|_secret|_token|_key|_password|_passphrase|_id|_ids|_channel|admins|flow_limits)$');

-- A restore keeps each setting's updated_at and updated_by as the dump has them (the trigger
-- stamped the time and role of the restore instead).
CREATE FUNCTION flowgate."restore_loading_settings"() RETURNS bool
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'restore_loading_settings_wrapper';
COMMENT ON FUNCTION flowgate.restore_loading_settings() IS
  'Whether a restore is loading flowgate.settings now (a COPY into it by a role row security does not apply to, as pg_restore runs): the settings trigger then keeps each row''s updated_at and updated_by as the dump has them.';
CREATE OR REPLACE FUNCTION flowgate.settings_guard() RETURNS trigger
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

-- An exception's longest life in hours, not in days: interval '90 days' added to its creation
-- followed the session's time zone, so the same row passed in one session and failed (23514)
-- in another across a daylight-saving change, an approval or a restore among them. Two hours
-- over 90 x 24 keep the rows 0.1.0 wrote in such a zone valid.
ALTER TABLE ops.exceptions DROP CONSTRAINT exception_expiry_within_90_days,
    ADD CONSTRAINT exception_expiry_within_90_days CHECK (expires_at <= created_at + interval '2162 hours');

-- Capacity ids: the year is UTC's, and numbers past 999999 are not cut to six digits.
COMMENT ON FUNCTION capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text) IS
  $doc$Create a Capacity Request (id CR-<year>-<number>: the year in UTC, the number at least 6 digits) as the caller, or as requester_user_id from a trusted session; returns it with its events and allowed events. A retried idempotency_key returns the first request. 42501 for anonymous callers, 22023 for bad arguments (e.g. the requester named as commercial owner).$doc$;

-- An intake pool's slot sequence joined the extension before its privileges were taken back,
-- so the extension recorded the defaults' grants as its initial privileges, and dumps carried a
-- REVOKE for a sequence they do not create (the restore failed on it). Joining again records
-- the privileges it has.
DO $slots$
DECLARE
    seq regclass;
BEGIN
    FOR seq IN
        SELECT c.oid::regclass
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'intake' AND c.relkind = 'S' AND c.relname LIKE 'slots\_%'
           AND EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e'
                          AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'flowgate'))
    LOOP
        EXECUTE pg_catalog.format('ALTER EXTENSION flowgate DROP SEQUENCE %s', seq);
        EXECUTE pg_catalog.format('ALTER EXTENSION flowgate ADD SEQUENCE %s', seq);
    END LOOP;
END
$slots$;

-- A Slack id linked to its person's actor (flowgate.request_identity_link redeemed from Slack,
-- or a trusted session's flowgate.link_identity) is that person: requests recorded with the
-- Slack id as requester or commercial owner (made from Slack before the link) name the actor
-- from then on, for permissions and for reading alike. A requester cannot pass their own
-- technical review by linking, and unlinking later gives the Slack id nothing back.
CREATE FUNCTION capacity.adopt_linked_parties() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.provider = 'slack' THEN
        UPDATE capacity.capacity_requests SET requester_user_id = NEW.actor_id WHERE requester_user_id = NEW.external_id;
        UPDATE capacity.capacity_requests SET commercial_owner_user_id = NEW.actor_id WHERE commercial_owner_user_id = NEW.external_id;
        UPDATE capacity.capacity_request_tasks SET assigned_to = NEW.actor_id WHERE assigned_to = NEW.external_id AND status = 'open';
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION capacity.adopt_linked_parties() FROM PUBLIC;
COMMENT ON FUNCTION capacity.adopt_linked_parties() IS
  'Trigger: a Slack id linked to an actor makes the requests naming that Slack id as requester or commercial owner, and their open tasks assigned to it, name the actor.';
CREATE TRIGGER adopt_linked_parties AFTER INSERT OR UPDATE OF actor_id ON flowgate.identity_links
    FOR EACH ROW EXECUTE FUNCTION capacity.adopt_linked_parties();
-- drop_secret forgets a secret in Vault too: Vault is read first when a delivery is sent, so a
-- secret dropped from flowgate.secrets alone was still sent.
CREATE OR REPLACE FUNCTION flowgate.drop_secret(name text) RETURNS boolean
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
COMMENT ON FUNCTION flowgate.drop_secret(text) IS
  'Forget a named secret, in Supabase Vault (when installed) and in flowgate.secrets; true when one existed.';

-- Direct writes by an anonymous caller (a persona JWT without a subject) are refused, as
-- ops.ingest_event refuses them: every holder of such a token would be one actor.
CREATE FUNCTION flowgate."actor_is_anonymous"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'actor_is_anonymous_wrapper';
COMMENT ON FUNCTION flowgate.actor_is_anonymous() IS
  'Whether the acting identity is anonymous: the anon role, or a JWT with no subject from an untrusted session (every such caller would be one actor, the role). Row rules of direct writes refuse such writers, as the write functions do.';
CREATE OR REPLACE FUNCTION ops.check_direct_insert() RETURNS trigger
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
    -- An anonymous writer (a JWT without a subject: every holder would be the same actor) writes
    -- nothing in its name, as ops.ingest_event refuses it.
    IF flowgate.actor_is_anonymous() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('an anonymous caller may not write ops.%s', TG_TABLE_NAME),
            DETAIL = 'the session''s JWT names no subject: every such caller would be the same actor',
            HINT = 'sign in (a JWT with a sub claim), or write from a trusted session';
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

-- A running attempt's lease is renewed by each answer of its steps (not a job event).
COMMENT ON TABLE provisioning.client_provisioning_jobs IS
  'Projection of each job''s events (provisioning.job_events); written only through the job reducer, but for a running attempt''s lease, which each answer of its steps renews.';

-- A person links their own Slack id with a code they ask for signed in
-- (flowgate.request_identity_link) and redeem from Slack (/capacity link CODE): naming an id no
-- longer links it (anyone could claim an approver's Slack id, whose clicks would then act as
-- them). Links whose linked_by is their actor_id prove nothing and are removed (a NOTICE says
-- how many): those people made for themselves under 0.1.0, and also a trusted session's link of
-- its own id, or a provisioned link its owner later linked again; links a trusted session made
-- for someone else stay.
DO $links$
DECLARE
    n bigint;
BEGIN
    WITH gone AS (DELETE FROM flowgate.identity_links WHERE linked_by = actor_id RETURNING 1)
    SELECT count(*) INTO n FROM gone;
    IF n > 0 THEN
        RAISE NOTICE 'flowgate: % self-made identity link(s) removed; their owners link again with flowgate.request_identity_link and /capacity link CODE', n;
    END IF;
END
$links$;
COMMENT ON TABLE flowgate.identity_links IS
  'External identities (provider slack: a Slack user id) and the actor each acts as. A person links '
  'their own by redeeming, as that identity, a code they asked for signed in (flowgate.request_identity_link); '
  'a trusted session links anyone''s. Verified Slack requests from a linked id act as the actor.';
-- Requests (and their open tasks) naming a linked Slack id name its actor: the links that stay,
-- after the self-made ones above are gone (anyone could make one under 0.1.0).
UPDATE capacity.capacity_requests r SET requester_user_id = l.actor_id
  FROM flowgate.identity_links l WHERE l.provider = 'slack' AND r.requester_user_id = l.external_id;
UPDATE capacity.capacity_requests r SET commercial_owner_user_id = l.actor_id
  FROM flowgate.identity_links l WHERE l.provider = 'slack' AND r.commercial_owner_user_id = l.external_id;
UPDATE capacity.capacity_request_tasks t SET assigned_to = l.actor_id
  FROM flowgate.identity_links l WHERE l.provider = 'slack' AND t.assigned_to = l.external_id AND t.status = 'open';
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
-- Signed Slack requests handled lately, with their answers (capacity.handle_slack_command and
-- handle_slack_action): the same request sent again gets the same answer and changes nothing.
CREATE TABLE capacity.slack_requests (
    signature   text PRIMARY KEY CHECK (signature ~ '^v0=[0-9a-f]{64}$'),
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    answer      jsonb
);
COMMENT ON TABLE capacity.slack_requests IS
  'Signed Slack requests and their answers, kept at least 15 minutes (pruned as later requests come): a request sent again gets the same answer and changes nothing.';
REVOKE ALL ON capacity.slack_requests FROM PUBLIC;
CREATE FUNCTION flowgate."request_identity_link"(
	"provider" TEXT /* Option < & str > */
) RETURNS jsonb /* Result < JsonB, ErrorReport > */
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'request_identity_link_wrapper';
COMMENT ON FUNCTION flowgate.request_identity_link(text) IS
  $doc$A one-time code that links your identity at provider to you, signed in: the identity redeems it (in Slack: /capacity link CODE, a request Slack signs) within ten minutes; a new code replaces the last. Returns {provider, actor_id, code, expires_at}. This is how a person links their own Slack id: only the Slack user who sends the code is linked. 42501 for an anonymous caller; 22023 for a provider no module redeems codes for (slack does).$doc$;
-- grant_api hands out request_identity_link with the rest of the flowgate API; service_role,
-- granted that API at install, gets it now.
CREATE OR REPLACE FUNCTION flowgate.grant_api(role_name text, modules text[] DEFAULT ARRAY['flowgate', 'capacity', 'intake', 'provisioning'])
RETURNS TABLE (module text, granted text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m text;
    f text;
    api jsonb := '{
      "flowgate": ["flowgate.current_actor()", "flowgate.current_actor_info(text)", "flowgate.link_identity(text, text, text)",
                   "flowgate.request_identity_link(text)", "flowgate.unlink_identity(text, text)",
                   "flowgate.get_setting(text)", "flowgate.setting_definitions()"],
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
DO $grant_backend$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION flowgate.request_identity_link(text) TO service_role;
    END IF;
END
$grant_backend$;
COMMENT ON FUNCTION flowgate.link_identity(text, text, text) IS
  $doc$Link an external identity (provider 'slack': a Slack user id) to the actor it acts as, so one person is one actor on every surface; returns the link. For trusted sessions, which link anyone's (actor_id defaults to the caller). Anyone else gets 42501 unless the identity is linked to them already: a person links their own with a code (flowgate.request_identity_link).$doc$;

-- The exposure rule of a fresh install (finalize.sql): anon, authenticated and every other role
-- the installing role's default privileges name (service_role aside) get nothing those defaults
-- gave them on what this update created.
DO $exposure$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')
        UNION
        SELECT g.rolname
          FROM pg_catalog.pg_default_acl d
         CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a
          JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
         WHERE d.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
           AND (d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT oid FROM pg_catalog.pg_namespace
                                                                WHERE nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')))
           AND g.rolname NOT IN ('service_role', current_user)
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.on_facts_truncated() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.restore_loading() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION flowgate.actor_is_anonymous() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION capacity.adopt_linked_parties() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION flowgate.restore_loading_settings() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION flowgate.request_identity_link(text) FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION flowgate.is_endpoint_url(text) FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE flowgate.identity_link_codes FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE capacity.slack_requests FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE flowgate.pg_net_epoch FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE flowgate.server_run FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.mark_default_requirement() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.direct_effects() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.drop_release_locks() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE ops.release_locks FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE intake.retired_pools FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION intake.fixed_pool_shape() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.take_turn_for_check() FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION ops.take_release_turn(uuid) FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE ops.v_check_reports FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
    END LOOP;
    -- service_role keeps its reads and API, never an owner's rights (0.1.0 left what default
    -- privileges gave it, whoever installed it): taken back as a fresh install does
    -- (finalize.sql). The install granted it no write, so nothing it needs goes.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') AND current_user <> 'service_role' THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
            ON ALL TABLES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE CREATE ON SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE ALL ON TABLE flowgate.secrets FROM service_role;
        REVOKE ALL ON TABLE ops.release_locks FROM service_role;
        REVOKE ALL ON TABLE intake.retired_pools FROM service_role;
    END IF;
END
$exposure$;

-- Owner and operator functions that run statements resolve their names in pg_catalog (and
-- pg_temp last), not in the caller's search_path: a database's default search_path is its
-- owner's to set, and the extension's owner (pg_cron) or a superuser calls these. Last in this
-- script, after every CREATE OR REPLACE of them.
DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'c')
           AND EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e'
                          AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'flowgate'))
           AND (n.nspname, p.proname) IN (
               ('ops', 'refresh_gates'), ('ops', 'expire_bypasses'),
               ('intake', 'create_pool'), ('intake', 'drop_pool'), ('intake', 'recover_pool'),
               ('intake', 'reclaim_slots'), ('intake', 'drain'), ('intake', 'pool_status'),
               ('intake', 'replay_dlq'), ('intake', 'read_intents'), ('intake', 'report_validation'),
               ('intake', 'report_commit'), ('intake', 'collect_metrics'),
               ('capacity', 'get_capacity_request'), ('capacity', 'run_capacity_request_timers'),
               ('flowgate', 'set_setting'), ('flowgate', 'reset_setting'),
               ('flowgate', 'install_schedules'), ('flowgate', 'uninstall_schedules'),
               ('flowgate', 'enqueue_delivery'), ('flowgate', 'set_secret'),
               ('flowgate', 'effective_transport'), ('flowgate', 'collect'),
               ('flowgate', 'rerun_handlers'), ('flowgate', 'record_attempt'))
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path TO pg_catalog, pg_temp', f);
    END LOOP;
END
$pin$;

-- unlink_identity no longer tells an untrusted caller whether an id is linked to someone else.
COMMENT ON FUNCTION flowgate.unlink_identity(text, text) IS
  $doc$Remove a link made with flowgate.link_identity: your own, or any for trusted sessions. Returns the removed link, or NULL when there was none of yours (whether or not the id is linked to someone else, which this does not tell); 42501 for an anonymous caller.$doc$;

-- Text settings refuse control characters now (an id or URL holding one failed every call that
-- used it). A stored value holding one is reset to its default, with a warning: left, it would
-- make a dump of flowgate.settings fail to restore.
DO $settings$
DECLARE
    k text;
BEGIN
    FOR k IN SELECT s.key FROM flowgate.settings s
              WHERE pg_catalog.jsonb_typeof(s.value) = 'string' AND (s.value #>> '{}') ~ '[[:cntrl:]]'
                AND s.key IN (SELECT d.key FROM flowgate.setting_definitions() d WHERE d.kind = 'text') LOOP
        DELETE FROM flowgate.settings s WHERE s.key = k;
        RAISE WARNING 'flowgate setting % held a control character; it is reset to its default', k
            USING HINT = 'set it again with flowgate.set_setting()';
    END LOOP;
END
$settings$;

-- The updating role's default privileges as they were (lifted at the top of this script).
DO $defaults$
BEGIN
    IF pg_catalog.current_setting('flowgate_install.lifted_public_execute', true) = 'on' THEN
        ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
        PERFORM pg_catalog.set_config('flowgate_install.lifted_public_execute', '', true);
    END IF;
END
$defaults$;

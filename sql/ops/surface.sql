-- ops surface: gate statuses kept by triggers, the rules of direct writes, personas' grants and
-- policies, reporting views; loaded after every Rust function it names (requires in src/ops/mod.rs).

-- The value lists of ops (src/ops/values.rs) as CHECK constraints of the columns that hold
-- them (23514 for a direct write outside a list), before anything else is added.
DO $values$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT ops.value_constraints() LOOP
        EXECUTE s;
    END LOOP;
END
$values$;

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

-- Evidence attached to a gate or check belongs to that gate's release (filled in when omitted,
-- refused when contradicted), and a check it names is of the gate it names.
CREATE FUNCTION ops.evidence_release() RETURNS trigger
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
REVOKE EXECUTE ON FUNCTION ops.evidence_release() FROM PUBLIC;
CREATE TRIGGER evidence_release BEFORE INSERT OR UPDATE ON ops.evidence_artifacts
    FOR EACH ROW EXECUTE FUNCTION ops.evidence_release();

-- A writer of a release takes its turn as ops.ingest_event does (store::lock_release_row): the
-- release's row locked FOR NO KEY UPDATE, then its row in ops.release_locks rewritten, so a
-- REPEATABLE READ transaction whose snapshot missed an earlier writer fails with 40001. False
-- when the release does not exist. For the triggers (owner only).
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

-- The production promotion block: no staging or production deployment of a release that is
-- not eligible, however the row is written (inserted, or moved to another environment or
-- release); except by a restore loading the table (a COPY by a
-- role row security does not apply to: pg_restore and psql load dumps so), whose deployments
-- were allowed when they were made and whose facts may not all be loaded yet.
CREATE FUNCTION ops.check_promotion() RETURNS trigger
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
REVOKE EXECUTE ON FUNCTION ops.check_promotion() FROM PUBLIC;
CREATE TRIGGER promotion_block BEFORE INSERT OR UPDATE OF environment, release_id ON ops.deployments
    FOR EACH ROW EXECUTE FUNCTION ops.check_promotion();

-- Direct writes keep the rules of ops.ingest_event. Personas write some tables directly (the
-- grants and policies below); everything ingest checks before it writes holds for those rows
-- too. Row-local rules are CHECK constraints in tables.sql (23514). The rest are these triggers:
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

-- A check result written directly (by a persona) takes its release's turn before the row exists,
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

-- A deleted release's lock row (ops.release_locks) goes with it, however the release is deleted.
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

-- The time of a decision, finish, rollback or resolution is the database's (as in ingest): an
-- UPDATE that makes the move and leaves the column as it was gets now().
-- Whether a requirement is one of the built-in defaults is a property of its pair, not of how
-- the row was written: a default deleted and written again is a default again, so it stays out
-- of dumps (CREATE EXTENSION makes it) and a restore does not collide with it.
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

CREATE FUNCTION ops.stamp_transition() RETURNS trigger
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
REVOKE EXECUTE ON FUNCTION ops.stamp_transition() FROM PUBLIC;
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.exceptions FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.deployments FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();
CREATE TRIGGER stamp_transition BEFORE UPDATE ON ops.incidents FOR EACH ROW EXECUTE FUNCTION ops.stamp_transition();

-- Exceptions (exception_requested / exception_decided): a new one expires in the future (at
-- most 90 days after it is requested: CHECK exception_expiry_within_90_days); requested ->
-- approved | rejected, approved -> revoked, nothing else; an expired exception is not approved;
-- decided_by, decided_at and decision_comment change only with a decision, and revoked_by,
-- revoked_at and revoke_comment only with a revocation, which leaves the approval as it was. The
-- decider or revoker is a release manager (grants), in their own name (policy), not the
-- requester (CHECKs exception_four_eyes, exception_revocation_recorded).
CREATE FUNCTION ops.exception_rules() RETURNS trigger
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

-- Functions: not for PUBLIC; the persona matrix grants them (below).
REVOKE EXECUTE ON FUNCTION ops.ingest_event(jsonb), ops.evaluate_gate(uuid), ops.is_eligible_for_promotion(uuid, text),
    ops.promotion_status(uuid, text), ops.refresh_gates(uuid), ops.expire_bypasses(),
    ops.persona_privileges(), ops.value_constraints() FROM PUBLIC;

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

-- A bypass counts as expired from its expiry on, judged at the start of the reading statement
-- (statement_timestamp(), stable: the stored statuses' CTE is inlined and filtered with the
-- query; a volatile clock would make Postgres materialize it for every release).
CREATE VIEW ops.v_promotion_eligibility WITH (security_invoker = true) AS
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

-- Personas: the roles, their GRANTs, row-level security policies and the CHECK on an approval's
-- persona, all from the persona matrix (src/ops/personas.rs), which also decides who may send
-- which event. Anything not granted is refused with 42501 (insufficient privilege) or filtered
-- by row-level security. ops.persona_privileges() lists the statements for an operator to read.
DO $personas$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT ops.persona_privileges() LOOP
        EXECUTE s;
    END LOOP;
END
$personas$;

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

COMMENT ON FUNCTION ops.on_gate_fact() IS
  'Trigger: a fact written or deleted outside ops.ingest_event re-evaluates its release''s gates under the release''s row lock.';
COMMENT ON FUNCTION ops.evidence_release() IS
  'Trigger: evidence on a gate or check belongs to that gate''s release (filled in when omitted, 23514 when contradicted).';
COMMENT ON FUNCTION ops.check_promotion() IS
  'Trigger: no staging or production deployment of a release that is not eligible (55000), however the row is written.';
COMMENT ON FUNCTION ops.check_direct_insert() IS
  'Trigger: a row a persona writes directly records the present and no envelope, as ingest would (22023 otherwise).';
COMMENT ON FUNCTION ops.create_release_gates(uuid) IS
  'Give a release its four gates (G1-G4), as release_created does; nothing for gates it has.';
COMMENT ON FUNCTION ops.direct_release_gates() IS
  'Trigger: a release a persona writes directly gets its four gates.';
COMMENT ON FUNCTION ops.stamp_transition() IS
  'Trigger: an UPDATE that decides, finishes, rolls back or resolves and leaves its time as it was gets now().';
COMMENT ON FUNCTION ops.exception_rules() IS
  'Trigger: exceptions move requested -> approved | rejected, approved -> revoked, nothing else; an expired one is not approved (55000).';
COMMENT ON FUNCTION ops.deployment_rules() IS
  'Trigger: deployments move started -> succeeded | failed -> rolled_back; G4 changes only on a succeeded deployment (55000).';
COMMENT ON FUNCTION ops.incident_rules() IS
  'Trigger: incidents move open -> resolved, and a resolved incident is final (55000).';

#!/usr/bin/env bash
# The upgrade path, on the running test cluster, from every earlier release: a database created
# at that release (its install script as kept in sql/released/, with this build's library, which
# still has every function an earlier release names) holds work in flight in every module; then
# ALTER EXTENSION flowgate UPDATE moves it to this version. Nothing may be lost and every
# workflow must carry on: a capacity request mid-approval reaches ACTIVATED, queued intents
# drain into the ledger, a pending delivery is sent, a provisioning job finishes, an ingested
# release keeps its gates exact. Then the upgraded catalog must equal a fresh install's, object
# for object. Both databases are made under Supabase-style default privileges for anon and
# authenticated, so an update that forgets the exposure rule shows up as a difference.
# Prints "ok N - ..." lines (N checks each). Expects lib.sh's test cluster and flowgate-testd.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fail() { echo "not ok: upgrade: $*" >&2; exit 1; }
OLD_DB=flowgate_upgrade
NEW_DB=flowgate_fresh
TESTD="http://127.0.0.1:$TESTD_PORT"
q() { psql_at "$TEST_PORT" "$OLD_DB" -tA -c "$1"; }
current=$(current_version)
mapfile -t releases < <(previous_releases)
if [ ${#releases[@]} -eq 0 ]; then
  echo "ok 0 - upgrade: no release before $current to upgrade from"
  exit 0
fi
curl -fsS -o /dev/null "$TESTD/ok" || fail "flowgate-testd does not answer at $TESTD (start it: lib.sh start_testd)"
work=$(mktemp -d)
made_roles=()
cleanup() {
  rm -rf "$work"
  for db in "$OLD_DB" "$NEW_DB"; do psql_at "$TEST_PORT" postgres -q -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; done
  for r in "${made_roles[@]}"; do psql_at "$TEST_PORT" postgres -q -c "DROP ROLE IF EXISTS $r" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
for r in anon authenticated; do
  if [ -z "$(psql_at "$TEST_PORT" postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$r'")" ]; then
    psql_at "$TEST_PORT" postgres -q -c "CREATE ROLE $r NOLOGIN"
    made_roles+=("$r")
  fi
done

# The catalog of flowgate in a database, one sorted line per object and property.
describe() {
  psql_at "$TEST_PORT" "$1" -tA <<'SQL'
WITH members AS (
    SELECT classid, objid, objsubid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'flowgate'
     WHERE d.deptype = 'e'),
acl(oid, cls, txt) AS (
    SELECT c.oid, 'pg_class'::regclass, string_agg(a.grantee::regrole || ':' || a.privilege_type, ',' ORDER BY a.grantee::regrole::text, a.privilege_type)
      FROM pg_class c, aclexplode(c.relacl) a WHERE c.relacl IS NOT NULL GROUP BY c.oid
    UNION ALL
    SELECT p.oid, 'pg_proc'::regclass, string_agg(a.grantee::regrole || ':' || a.privilege_type, ',' ORDER BY a.grantee::regrole::text, a.privilege_type)
      FROM pg_proc p, aclexplode(p.proacl) a WHERE p.proacl IS NOT NULL GROUP BY p.oid),
rels AS (SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid)
SELECT line FROM (
    -- every member, whatever its kind
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) AS line FROM members
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' (' || pg_get_function_arguments(p.oid) || ') ' || md5(p.prosrc) || ' '
           || coalesce(p.probin, '') || ' ' || p.prokind::text || p.provolatile::text || p.proparallel::text
           || ' secdef ' || p.prosecdef || ' strict ' || p.proisstrict || ' leakproof ' || p.proleakproof || ' cost ' || p.procost
           || ' lang ' || l.lanname || ' owner ' || p.proowner::regrole || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
           || ' returns ' || pg_get_function_result(p.oid) || ' ' || coalesce(md5(obj_description(p.oid, 'pg_proc')), '-')
           || ' acl ' || coalesce((SELECT txt FROM acl WHERE acl.oid = p.oid AND cls = 'pg_proc'::regclass), '-')
      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid JOIN pg_language l ON l.oid = p.prolang
    UNION ALL
    SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' ' || c.relpersistence::text || ' rls ' || c.relrowsecurity
           || ' force ' || c.relforcerowsecurity || ' owner ' || c.relowner::regrole || ' options ' || coalesce(array_to_string(c.reloptions, ','), '-')
           || ' ' || coalesce(md5(obj_description(c.oid, 'pg_class')), '-')
           || ' acl ' || coalesce((SELECT txt FROM acl WHERE acl.oid = c.oid AND cls = 'pg_class'::regclass), '-')
           || CASE WHEN c.relkind = 'v' THEN ' ' || md5(pg_get_viewdef(c.oid)) ELSE '' END
      FROM rels c
    UNION ALL
    SELECT 'column ' || c.oid::regclass || '.' || a.attnum || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
           || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-') || ' identity ' || a.attidentity::text
           || ' generated ' || a.attgenerated::text || ' collation ' || a.attcollation::regcollation || ' '
           || coalesce(md5(col_description(c.oid, a.attnum)), '-') || ' '
           || coalesce((SELECT string_agg(x.grantee::regrole || ':' || x.privilege_type, ',' ORDER BY x.grantee::regrole::text, x.privilege_type)
                          FROM aclexplode(a.attacl) x), '-')
      FROM rels c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT 'sequence ' || s.seqrelid::regclass || ' ' || format_type(s.seqtypid, NULL) || ' ' || s.seqstart || ' ' || s.seqincrement
           || ' ' || s.seqmax || ' ' || s.seqmin || ' ' || s.seqcache || ' ' || s.seqcycle
           || ' owned by ' || coalesce((SELECT d.refobjid::regclass || '.' || d.refobjsubid FROM pg_depend d
                                          WHERE d.objid = s.seqrelid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                                            AND d.refclassid = 'pg_class'::regclass LIMIT 1), '-')
      FROM pg_sequence s JOIN rels c ON c.oid = s.seqrelid
    UNION ALL
    SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
           || ' ' || coalesce(md5(obj_description(co.oid, 'pg_constraint')), '-')
      FROM pg_constraint co JOIN rels c ON c.oid = co.conrelid
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels c ON c.oid = i.indrelid
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text || ' '
           || coalesce(md5(obj_description(t.oid, 'pg_trigger')), '-')
      FROM pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'policy ' || po.schemaname || '.' || po.tablename || ' ' || po.policyname || ' ' || po.cmd || ' ' || po.permissive || ' '
           || (SELECT string_agg(x, ',' ORDER BY x) FROM unnest(po.roles) x) || ' ' || coalesce(po.qual, '-') || ' ' || coalesce(po.with_check, '-')
      FROM pg_policies po WHERE po.schemaname IN ('flowgate', 'capacity', 'intake', 'ops', 'provisioning')
    UNION ALL
    SELECT 'type ' || t.oid::regtype || ' ' || t.typtype::text || ' ' || coalesce(format_type(nullif(t.typbasetype, 0), NULL), '-') || ' '
           || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '')
           || coalesce((SELECT string_agg(pg_get_constraintdef(co.oid), ',' ORDER BY co.conname) FROM pg_constraint co WHERE co.contypid = t.oid), '')
           || ' ' || coalesce(md5(obj_description(t.oid, 'pg_type')), '-')
      FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    SELECT 'schema ' || n.nspname || ' owner ' || n.nspowner::regrole || ' ' || coalesce(md5(obj_description(n.oid, 'pg_namespace')), '-') || ' '
           || coalesce((SELECT string_agg(x.grantee::regrole || ':' || x.privilege_type, ',' ORDER BY x.grantee::regrole::text, x.privilege_type)
                          FROM aclexplode(n.nspacl) x), '-')
      FROM pg_namespace n WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'ops', 'provisioning')
    UNION ALL
    SELECT 'config ' || c.oid::regclass || ' ' || coalesce(e.extcondition[array_position(e.extconfig, c.oid)], '')
      FROM pg_extension e, unnest(e.extconfig) cfg(oid) JOIN pg_class c ON c.oid = cfg.oid WHERE e.extname = 'flowgate'
    UNION ALL
    -- rows the install writes
    SELECT 'seed ops.environment_gate_requirements ' || md5(string_agg(r::text, ',' ORDER BY r::text))
      FROM (SELECT environment, gate_code, is_default FROM ops.environment_gate_requirements) r
    UNION ALL
    SELECT 'publication ' || p.pubname || ' ' || pr.prrelid::regclass
      FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid JOIN rels c ON c.oid = pr.prrelid
) all_objects ORDER BY line;
SQL
}

upgrade_from() {
local prev=$1
install_release_script "$prev"
for db in "$OLD_DB" "$NEW_DB"; do
  psql_at "$TEST_PORT" postgres -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  # What Supabase's images do: whatever the installing role creates, anon and authenticated may use.
  psql_at "$TEST_PORT" "$db" -q -c "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated" \
    -c "ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated" \
    -c "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated" \
    -c "CREATE EXTENSION pgmq; CREATE EXTENSION pgcrypto;"
done
psql_at "$TEST_PORT" "$OLD_DB" -q -c "CREATE EXTENSION flowgate VERSION '$prev'"
psql_at "$TEST_PORT" "$NEW_DB" -q -c "CREATE EXTENSION flowgate"
[ "$(q "SELECT extversion FROM pg_extension WHERE extname = 'flowgate'")" = "$prev" ] || fail "not created at $prev"

# ---- work in flight at the previous release ----------------------------------------------------
psql_at "$TEST_PORT" "$OLD_DB" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT set_config('flowgate.tenant_key_passphrase', 'upgrade-passphrase-0123456789abcdef', false)
 WHERE coalesce(current_setting('flowgate.tenant_key_passphrase', true), '') = '';
-- capacity: a request past its commercial approval, waiting for technical review
INSERT INTO capacity.group_members VALUES ('commercial_approvers', 'ae-1');
CREATE TABLE public.upg AS SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS cr;
SELECT capacity.apply_event((SELECT cr FROM public.upg), 'COMMERCIAL_APPROVED');
-- intake: a pool with six claims whose intents wait in the queue
SELECT intake.create_pool('upg', 10, jsonb_build_object('validation_webhook_url', '$TESTD/ok', 'drain_mode', 'external'));
SELECT intake.claim_resource('upg', 'user-' || g) FROM generate_series(1, 6) g;
-- outbox: a delivery nobody has sent yet
SELECT flowgate.enqueue_delivery('upgrade', 'd1', '$TESTD/ok', 'upgrade-d1', '{"hello": "upgrade"}');
-- ops: a release with a passed G1 check
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/r', 'event_type', 'release_created',
       'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001', 'version', 'v1'));
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/c1', 'event_type', 'check_result',
       'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001', 'gate_code', 'G1', 'check_name', 'build', 'status', 'pass'));
-- ops: an exception dev-1 requested, rm-1 approved and rm-2 revoked (this library on the old
-- schema records the revoker as the decider, as the old version did)
SET request.jwt.claims = '{"sub": "dev-1", "role": "developer"}';
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/x', 'event_type', 'exception_requested',
       'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001', 'gate_code', 'G3', 'reason', 'approver away',
       'expires_at', now() + interval '1 day', 'exception_id', 'a1a1a1a1-0000-4000-8000-0000000000e1'));
SET request.jwt.claims = '{"sub": "rm-1", "role": "release_manager"}';
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/x-ok', 'event_type', 'exception_decided',
       'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001', 'exception_id', 'a1a1a1a1-0000-4000-8000-0000000000e1',
       'decision', 'approved', 'comment', 'one day'));
SET request.jwt.claims = '{"sub": "rm-2", "role": "release_manager"}';
CREATE TABLE public.upg_revoke AS SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/x-rv',
       'event_type', 'exception_decided', 'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001',
       'exception_id', 'a1a1a1a1-0000-4000-8000-0000000000e1', 'decision', 'revoked', 'comment', 'back early')) ->> 'status' AS status;
-- ops: qa-1 signs G2 off; the old version named the signer as its evidence's submitter
SET request.jwt.claims = '{"sub": "qa-1", "role": "qa_tester"}';
SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/qa', 'event_type', 'gate_signoff',
       'source_system', 'upgrade', 'release_id', 'a1a1a1a1-0000-4000-8000-000000000001'));
RESET request.jwt.claims;
SET session_replication_role = replica;
UPDATE ops.evidence_artifacts SET submitted_by = 'qa-1' WHERE artifact_type = 'qa_signoff';
SET session_replication_role = origin;
-- provisioning: a tenant whose job is queued
SELECT flowgate.set_setting('provisioning.organization_id', '"org-upgrade"');
SELECT flowgate.set_setting('provisioning.management_api_url', to_jsonb('$TESTD/mgmt/ok'::text));
SELECT flowgate.set_secret('supabase_access_token', 'upgrade-token-0123456789');
SELECT provisioning.enqueue_client('upgrade-tenant-' || substr(md5(random()::text), 1, 8), 'Upgrade Tenant', 'eu-west-1', 'pro');
SQL
before=$(q "SELECT (SELECT count(*) FROM capacity.capacity_request_events) || ' ' || (SELECT count(*) FROM pgmq.q_intake_upg)
             || ' ' || (SELECT count(*) FROM flowgate.deliveries WHERE status = 'pending') || ' ' || (SELECT count(*) FROM ops.event_ingest_log)
             || ' ' || (SELECT count(*) FROM provisioning.client_provisioning_jobs WHERE status = 'queued')
             || ' ' || (SELECT count(*) FROM flowgate.settings)")
read -r events queued pending logged jobs settings <<<"$before"
[ "$queued" -eq 6 ] && [ "$pending" -ge 1 ] && [ "$jobs" -eq 1 ] || fail "the work in flight was not set up ($before)"
[ "$(q "SELECT status FROM public.upg_revoke")" = accepted ] || fail "the revocation on the old schema was not accepted"

# ---- the upgrade ------------------------------------------------------------------------------
psql_at "$TEST_PORT" "$OLD_DB" -q -c "ALTER EXTENSION flowgate UPDATE"
[ "$(q "SELECT extversion FROM pg_extension WHERE extname = 'flowgate'")" = "$current" ] || fail "not at $current after the update"
after=$(q "SELECT (SELECT count(*) FROM capacity.capacity_request_events) || ' ' || (SELECT count(*) FROM pgmq.q_intake_upg)
            || ' ' || (SELECT count(*) FROM flowgate.deliveries WHERE status = 'pending') || ' ' || (SELECT count(*) FROM ops.event_ingest_log)
            || ' ' || (SELECT count(*) FROM provisioning.client_provisioning_jobs WHERE status = 'queued')
            || ' ' || (SELECT count(*) FROM flowgate.settings)")
[ "$after" = "$before" ] || fail "rows changed in the update: before $before, after $after"
echo "ok 2 - upgrade: $prev -> $current with ALTER EXTENSION flowgate UPDATE; every row kept ($events request events, $queued queued intents, $pending pending deliveries, $logged ingest log rows, $jobs queued job, $settings settings)"

# ---- every workflow carries on -------------------------------------------------------------------
cr=$(q "SELECT cr FROM public.upg")
for e in TECH_REVIEW_APPROVED CUSTOMER_CONFIRMED AWS_CAPACITY_READY ACTIVATION_CONFIRMED; do
  state=$(q "SELECT capacity.apply_event('$cr', '$e') -> 'request' ->> 'state'")
done
[ "$state" = ACTIVATED ] || fail "the capacity request ended in $state, not ACTIVATED"
q "SELECT intake.drain('upg')" >/dev/null
for _ in $(seq 1 100); do
  psql_at "$TEST_PORT" "$OLD_DB" -q -c "CALL flowgate.run_outbox()" >/dev/null
  psql_at "$TEST_PORT" "$OLD_DB" -q -c "SELECT provisioning.run_jobs()" >/dev/null
  done_now=$(q "SELECT (SELECT count(*) FROM intake.transactions WHERE pool_id = 'upg') = 6
                   AND NOT EXISTS (SELECT FROM flowgate.deliveries WHERE status IN ('pending', 'in_flight'))
                   AND NOT EXISTS (SELECT FROM provisioning.client_provisioning_jobs WHERE status IN ('queued', 'running'))")
  [ "$done_now" = t ] && break
  sleep 0.1
done
[ "$(q "SELECT count(*) FROM intake.transactions WHERE pool_id = 'upg'")" -eq 6 ] || fail "the six queued intents did not reach the ledger"
[ "$(q "SELECT status FROM flowgate.deliveries WHERE idempotency_key = 'upgrade-d1'")" = delivered ] || fail "the pending delivery was not sent"
jobs_left=$(q "SELECT string_agg(job_type || ' ' || status, ', ') FROM provisioning.client_provisioning_jobs WHERE status <> 'succeeded'")
[ -z "$jobs_left" ] || fail "provisioning jobs did not finish: $jobs_left"
ready=$(q "SELECT count(*) FROM provisioning.clients WHERE provisioning_status = 'ready'")
[ "$ready" -eq 1 ] || fail "the tenant is not ready"
r=a1a1a1a1-0000-4000-8000-000000000001
q "SELECT ops.ingest_event(jsonb_build_object('schema_version', '1.0', 'idempotency_key', 'upg/c2', 'event_type', 'check_result',
     'source_system', 'upgrade', 'release_id', '$r', 'gate_code', 'G1', 'check_name', 'unit', 'status', 'fail'))" >/dev/null
g1=$(q "SELECT status FROM ops.release_gates WHERE release_id = '$r' AND gate_code = 'G1'")
exact=$(q "SELECT count(*) FROM ops.release_gates WHERE status <> ops.evaluate_gate(gate_id)")
[ "$g1" = failed ] && [ "$exact" -eq 0 ] || fail "the release's gates after the upgrade: G1 $g1, $exact stored statuses stale"
revocation=$(q "SELECT decided_by || ' ' || decision_comment || ' / ' || revoked_by || ' ' || revoke_comment FROM ops.exceptions
                WHERE exception_id = 'a1a1a1a1-0000-4000-8000-0000000000e1'")
[ "$revocation" = "rm-1 one day / rm-2 back early" ] || fail "the revoked exception after the upgrade: $revocation"
signoff=$(q "SELECT string_agg(submitted_by, ', ') FROM ops.evidence_artifacts WHERE artifact_type = 'qa_signoff'")
[ "$signoff" = "qa_tester (gate_signoff)" ] || fail "the signoff's evidence after the upgrade is submitted by '$signoff', not by the signing persona"
queue_grants=$(q "SELECT count(*) FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                  WHERE c.relnamespace = 'pgmq'::regnamespace AND c.relname LIKE '%intake\_upg%' AND a.grantee <> c.relowner")
[ "$queue_grants" -eq 0 ] || fail "the pool's queue tables still grant $queue_grants privileges to other roles after the upgrade"
echo "ok 5 - upgrade: in flight across it: the request reached ACTIVATED, 6 queued intents drained into the ledger, the pending delivery was sent, the tenant's jobs finished (ready), the release's G1 re-evaluated on a new check (failed, all statuses exact), a revoked exception keeps its approver beside its revoker, a signoff's evidence names the persona, not the signer, the pool's queue tables are owner-only"

# ---- the upgraded catalog equals a fresh install ---------------------------------------------------
# (The pool's own objects, which create_pool makes, go first: a fresh install has none.)
q "SELECT intake.drop_pool('upg')" >/dev/null
old_cat=$work/upgraded.txt; new_cat=$work/fresh.txt
describe "$OLD_DB" > "$old_cat"
describe "$NEW_DB" > "$new_cat"
objects=$(wc -l < "$new_cat")
[ "$objects" -gt 500 ] || fail "the catalog description has only $objects lines"
if ! diff -u "$new_cat" "$old_cat" > "$work/catalog.diff"; then
  head -n 60 "$work/catalog.diff" >&2
  fail "the upgraded catalog differs from a fresh install's ($prev -> $current; - fresh, + upgraded)"
fi
echo "ok 1 - upgrade: the upgraded catalog equals a fresh $current install ($objects objects and properties compared: functions, relations, columns, constraints, indexes, triggers, policies, types, grants, comments)"
}

for prev in "${releases[@]}"; do
  upgrade_from "$prev"
done

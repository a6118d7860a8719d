#!/usr/bin/env bash
# A backup restored elsewhere sells on: pg_dump of a database with a pool mid-sale, pg_restore
# into a fresh database. The dump holds the logged intents but neither the UNLOGGED inventory
# nor the pool's slot sequence; the first claim after the restore rebuilds both, and every
# claim made before the dump is kept, no user goes over the limit, nothing is sold twice.
# Env: PGHOST PGPORT PGUSER (the test cluster).
set -euo pipefail
SRC=fg_restore_src_$$
DST=fg_restore_dst_$$
q() { psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }
fail() { echo "not ok: $*" >&2; exit 1; }
cleanup() { q -d postgres -c "DROP DATABASE IF EXISTS $SRC" -c "DROP DATABASE IF EXISTS $DST" >/dev/null 2>&1 || true; rm -f "/tmp/$SRC.dump" "/tmp/$SRC.restore.log"; }
trap cleanup EXIT

q -d postgres -c "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST" >/dev/null
q -d "$SRC" -c "CREATE EXTENSION pgmq" -c "CREATE EXTENSION flowgate" >/dev/null
# Default privileges that grant on new sequences: a pool's slot sequence (not in dumps) must not
# leave the dump a REVOKE on a sequence it does not create.
q -d "$SRC" -c "ALTER DEFAULT PRIVILEGES GRANT SELECT ON SEQUENCES TO PUBLIC" >/dev/null
q -d "$SRC" -c "SELECT intake.create_pool('r1', 500, '{\"max_claims_per_user\": 2, \"drain_mode\": \"external\"}')" >/dev/null
q -d "$SRC" -c "SELECT intake.claim_resource('r1', 'user-' || (g % 150)) FROM generate_series(1, 200) g" >/dev/null
# A rate-limited pool (its drain clock is not in dumps) and metrics (their id sequence is).
q -d "$SRC" -c "SELECT intake.create_pool('rl', 5, jsonb_build_object('rate_limit_per_second', 50,
                  'validation_webhook_url', '${FLOWGATE_TESTD_URL:-http://127.0.0.1:5597}/ok'))" \
  -c "SELECT intake.claim_resource('rl', 'user-' || g) FROM generate_series(1, 3) g" \
  -c "SELECT intake.collect_metrics()" >/dev/null
# ops: a release deployed to staging, then made ineligible (pg_test/ops_deployed.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../ops_deployed.sh"
ops_before=$(ops_deployed "$SRC" r1 5)
# Two more pools, for what an operator does first after a restore: give back slots, drop a pool.
q -d "$SRC" -c "SELECT intake.create_pool(p, 10, '{\"drain_mode\": \"external\"}') FROM unnest(ARRAY['r2', 'r3']) p" \
  -c "SELECT intake.claim_resource('r2', 'user-' || g) FROM generate_series(1, 4) g" >/dev/null
before=$(q -d "$SRC" -c "SELECT count(*) FROM pgmq.q_intake_r1")
# A setting, restored with when and by whom it was written.
SETTINGS="SELECT string_agg(format('%s=%s at %s by %s', key, value, updated_at, updated_by), ', ' ORDER BY key) FROM flowgate.settings"
q -d "$SRC" -c "SELECT flowgate.set_setting('capacity.confirmation_ttl_business_days', '4')" >/dev/null
settings_before=$(q -d "$SRC" -c "$SETTINGS")
sleep 1
pg_dump -Fc -d "$SRC" -f "/tmp/$SRC.dump" 2>/dev/null
pg_restore -d "$DST" "/tmp/$SRC.dump" 2> "/tmp/$SRC.restore.log" || fail "pg_restore failed: $(head -c 600 "/tmp/$SRC.restore.log")"
ops_after=$(q -d "$DST" -c "$OPS_STATE")
[ "$ops_after" = "$ops_before" ] || fail "ops after the restore: $ops_after (before: $ops_before)"
settings_after=$(q -d "$DST" -c "$SETTINGS")
[ "$settings_after" = "$settings_before" ] || fail "settings after the restore: $settings_after (before: $settings_before)"
drained=$(q -d "$DST" -c "SELECT intake.drain('rl') ->> 'status'")
[ "$drained" != busy ] || fail "a rate-limited pool's drain answers busy after the restore"
q -d "$DST" -c "SELECT intake.collect_metrics()" -c "SELECT intake.collect_metrics()" >/dev/null || fail "collect_metrics failed after the restore"
[ "$(q -d "$DST" -c "SELECT to_regclass('intake.slots_r1') IS NULL")" = t ] || fail "the slot sequence came back from the dump?"
[ "$(q -d "$DST" -c "SELECT count(*) FROM intake.allocations WHERE pool_id = 'r1'")" -eq 0 ] || fail "the UNLOGGED inventory came back from the dump?"

# Before any claim: reclaim_slots rebuilds the pool and gives back nothing a claim holds;
# drop_pool drops a pool whose slot sequence the dump left out.
reclaimed=$(q -d "$DST" -c "SELECT intake.reclaim_slots('r2')") || fail "reclaim_slots failed after the restore"
r2_locked=$(q -d "$DST" -c "SELECT count(*) FROM intake.allocations WHERE pool_id = 'r2' AND status = 'locked'")
[ "$reclaimed" -eq 0 ] && [ "$r2_locked" -eq 4 ] || fail "reclaim_slots after the restore: $reclaimed given back, $r2_locked of 4 claims locked"
q -d "$DST" -c "SELECT intake.drop_pool('r3')" >/dev/null || fail "drop_pool failed after the restore"
[ "$(q -d "$DST" -c "SELECT count(*) FROM intake.engine_config WHERE pool_id = 'r3'")" -eq 0 ] || fail "r3 is still there"

# Claim on in the restored copy until sold out.
q -d "$DST" -c "SELECT intake.claim_resource('r1', 'user-' || g) FROM generate_series(1000, 1400) g" >/dev/null
locked=$(q -d "$DST" -c "SELECT count(*) FROM intake.allocations WHERE pool_id = 'r1' AND status = 'locked'")
intents=$(q -d "$DST" -c "SELECT count(*) FROM pgmq.q_intake_r1")
distinct=$(q -d "$DST" -c "SELECT count(DISTINCT message ->> 'resource_id') FROM pgmq.q_intake_r1")
kept=$(q -d "$DST" -c "SELECT count(*) FROM pgmq.q_intake_r1 m JOIN intake.allocations a ON a.pool_id = 'r1'
          AND a.slot = (m.message ->> 'slot')::int AND a.resource_id = (m.message ->> 'resource_id')::uuid
         WHERE m.msg_id <= $before")
over=$(q -d "$DST" -c "SELECT count(*) FROM (SELECT message ->> 'user_id' FROM pgmq.q_intake_r1 GROUP BY 1 HAVING count(*) > 2) x")
limit=$(q -d "$DST" -c "SELECT intake.claim_resource('r1', 'user-7') ->> 'status'")
[ "$locked" -eq 500 ] && [ "$intents" -eq 500 ] && [ "$distinct" -eq 500 ] || fail "$locked locked, $intents intents, $distinct resources for 500 items"
[ "$kept" -eq "$before" ] || fail "only $kept of the $before claims in the dump kept their slot and resource"
[ "$over" -eq 0 ] || fail "$over users over the limit after the restore"
[ "$limit" = sold_out ] || [ "$limit" = limit_reached ] || fail "a claim after selling out answered $limit"
# pgmq grants pg_monitor SELECT on the tables created in its schema (a default privilege of
# its own): a restore creates the pool's queue tables under it, and the rebuild on the first
# claim makes them owner-only again, as create_pool made them.
open_queue=$(q -d "$DST" -c "SELECT string_agg(c.relname, ',') FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                               WHERE c.relnamespace = 'pgmq'::regnamespace AND c.relname LIKE '%intake_r1%' AND a.grantee <> c.relowner")
[ -z "$open_queue" ] || fail "after the restore and the first claim, the pool's queue tables are open to others: $open_queue"
echo "ok 5 - intake restore: a dump taken after $before claims restored into a new database; its first claim rebuilt inventory and slot sequence, then 500 of 500 sold, none twice, all $before kept, no user over 2; reclaim_slots and drop_pool work before any claim; ops deployments and gate statuses restored as dumped ($ops_after), settings with their writers and times, a rate-limited pool drains, metrics go on"
